//! A hint for the processor's caches, for code that knows what it will read next.
//!
//! It lives here, with the ring's other `unsafe` code, because the instruction is an
//! intrinsic that Rust calls `unsafe`; the engine and the applications built on it forbid
//! `unsafe` and reach it through this safe function.

/// The size of a cache line on the processors keel runs on.
const LINE: usize = 64;

/// Asks the processor to start loading the cache lines that `value` occupies, without waiting
/// for them, so that a read of `value` a little later finds them in the cache instead of
/// waiting for memory. It is only a hint: it reads nothing as far as the program is concerned,
/// never faults, and changes no result; on processors other than x86_64 it does nothing.
///
/// A state machine's `prefetch` (keel-engine) calls it for the records the next commands will
/// touch, such as a ledger's two accounts, so that several commands' cache misses are in
/// flight at once instead of one after another. Meant for values of a few cache lines: it
/// issues one hint a line.
#[inline(always)]
pub fn prefetch<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = (value as *const T).cast::<i8>();
        let size = std::mem::size_of_val(value);
        let hint = |offset: usize| {
            // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 processor has. A prefetch
            // neither reads nor writes memory in the language's sense and never faults, so any
            // address is allowed; these are within `value`, or its first byte for an empty one.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        };
        if size <= LINE {
            // One line or two: the first byte's and the last byte's (the same line twice costs
            // less than the branch that would tell them apart). The usual case, and for a
            // sized value the size is known when this is compiled.
            hint(0);
            hint(size.saturating_sub(1));
        } else {
            for line in 0..lines_spanned(start as usize, size) {
                hint((line * LINE).saturating_sub(start as usize % LINE));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// How many cache lines `size` bytes from address `start` touch (one for an empty value).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn lines_spanned(start: usize, size: usize) -> usize {
    if size == 0 {
        return 1;
    }
    (start + size - 1) / LINE - start / LINE + 1
}

#[cfg(test)]
mod tests {
    use super::{lines_spanned, prefetch, LINE};

    #[test]
    fn a_value_spans_the_lines_its_first_and_last_bytes_are_on() {
        // A 48-byte value, as a ledger's account, at each offset within a line.
        assert_eq!(lines_spanned(0, 48), 1);
        assert_eq!(lines_spanned(16, 48), 1);
        assert_eq!(lines_spanned(17, 48), 2);
        assert_eq!(lines_spanned(LINE * 3 + 63, 1), 1);
        assert_eq!(lines_spanned(LINE * 3 + 63, 2), 2);
        assert_eq!(lines_spanned(LINE, 4 * LINE), 4);
        assert_eq!(lines_spanned(LINE + 1, 4 * LINE), 5);
        assert_eq!(lines_spanned(5, 0), 1);
    }

    #[test]
    fn a_hint_changes_nothing_for_values_of_any_size_and_place() {
        let values: Vec<u64> = (0..64).collect();
        for start in 0..values.len() {
            prefetch(&values[start]);
            prefetch(&values[start..]);
            prefetch(&values[start..start]);
        }
        prefetch(&());
        prefetch("a str");
        assert_eq!(values, (0..64).collect::<Vec<u64>>());
    }
}
