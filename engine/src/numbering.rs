//! Where the commands' sequences lie among the journal's, when keel's checkpoint records take
//! some of them.
//!
//! With checkpoints every `N` commands, every journal sequence that is a multiple of `N + 1`
//! holds a checkpoint record (the state hash after the sequence before it), and commands take
//! the other sequences in order. The positions are a function of the sequence alone, not of how
//! the input happened to be batched, so a publisher knows its command's sequence when it claims
//! a ring slot, and the journal is the same whichever topology wrote it.

/// Maps the input ring's sequences (from 1 since the engine opened) to journal sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Numbering {
    /// The journal's last sequence when the engine opened.
    base: u64,
    /// `N + 1`: the distance between checkpoints; 0 without checkpoints.
    period: u64,
    /// How many sequences up to `base` are not checkpoint positions.
    counted: u64,
}

impl Numbering {
    /// Numbering after `base`, with a checkpoint after every `every` commands (`None` or 0:
    /// no checkpoints, every sequence is a command's).
    pub(crate) fn new(base: u64, every: Option<u64>) -> Self {
        let period = match every {
            Some(every) if every > 0 => every.saturating_add(1),
            _ => 0,
        };
        let counted = base - base.checked_div(period).unwrap_or(0);
        Self { base, period, counted }
    }

    /// The journal sequence of the command at ring sequence `ring` (`base` for 0, before the
    /// first).
    #[inline]
    pub(crate) fn command(&self, ring: u64) -> u64 {
        if self.period == 0 {
            return self.base + ring;
        }
        if ring == 0 {
            return self.base;
        }
        // The `c`-th positive integer that is not a multiple of `period` is
        // `c + (c - 1) / (period - 1)`: each full run of `period - 1` commands before it is
        // followed by one checkpoint.
        let count = self.counted + ring;
        count + (count - 1) / (self.period - 1)
    }

    /// Whether the journal sequence `sequence` is a checkpoint's.
    #[inline]
    pub(crate) fn is_checkpoint(&self, sequence: u64) -> bool {
        self.period != 0 && sequence.is_multiple_of(self.period)
    }

    /// How many consecutive sequences from `sequence` (a command's) are commands': up to the
    /// next checkpoint position, or all when there are no checkpoints.
    #[inline]
    pub(crate) fn commands_from(&self, sequence: u64) -> u64 {
        if self.period == 0 {
            return u64::MAX;
        }
        (sequence / self.period + 1) * self.period - sequence
    }

    /// Splits the `len` commands from ring sequence `first` into runs of consecutive journal
    /// sequences: `(offset in the batch, first journal sequence, commands)`, a checkpoint
    /// position between each run and the next.
    pub(crate) fn runs(&self, first: u64, len: usize) -> impl Iterator<Item = (usize, u64, usize)> {
        let numbering = *self;
        let mut offset = 0;
        std::iter::from_fn(move || {
            if offset == len {
                return None;
            }
            let sequence = numbering.command(first + offset as u64);
            let run = numbering.commands_from(sequence).min((len - offset) as u64) as usize;
            let item = (offset, sequence, run);
            offset += run;
            Some(item)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Numbering;

    /// The journal as a list of sequences, built one record at a time: a checkpoint wherever
    /// the rule puts one, else the next command.
    fn journal(base: u64, every: u64, commands: u64) -> Vec<(u64, bool)> {
        let period = every + 1;
        let mut records = Vec::new();
        let mut sequence = base;
        let mut placed = 0;
        while placed < commands {
            sequence += 1;
            let checkpoint = sequence.is_multiple_of(period);
            records.push((sequence, checkpoint));
            if !checkpoint {
                placed += 1;
            }
        }
        records
    }

    #[test]
    fn commands_skip_exactly_the_checkpoint_positions() {
        for every in [1, 2, 3, 7, 100] {
            for base in [0, 1, 5, 6, 7, 8, 99, 100, 101, 1_000_003] {
                let numbering = Numbering::new(base, Some(every));
                assert_eq!(numbering.command(0), base);
                let commands: Vec<u64> = journal(base, every, 300)
                    .into_iter()
                    .filter(|&(_, checkpoint)| !checkpoint)
                    .map(|(sequence, _)| sequence)
                    .collect();
                for (ring, &expected) in (1..).zip(&commands) {
                    assert_eq!(numbering.command(ring), expected, "every {every}, base {base}");
                    assert!(!numbering.is_checkpoint(expected));
                }
            }
        }
    }

    #[test]
    fn runs_end_at_checkpoints_and_cover_the_batch() {
        let numbering = Numbering::new(10, Some(4));
        // Ring 1..=12 are journal 11, 12, 13, 14, 16, 17, 18, 19, 21, 22, 23, 24 (15, 20, 25
        // are checkpoints).
        let runs: Vec<_> = numbering.runs(1, 12).collect();
        assert_eq!(runs, [(0, 11, 4), (4, 16, 4), (8, 21, 4)]);
        let runs: Vec<_> = numbering.runs(3, 3).collect();
        assert_eq!(runs, [(0, 13, 2), (2, 16, 1)]);
    }

    #[test]
    fn without_checkpoints_the_ring_and_the_journal_agree() {
        let numbering = Numbering::new(41, None);
        assert_eq!(numbering.command(5), 46);
        assert!(!numbering.is_checkpoint(42));
        assert_eq!(numbering.runs(1, 1000).collect::<Vec<_>>(), [(0, 42, 1000)]);
        assert_eq!(Numbering::new(41, Some(0)), numbering);
    }
}
