//! The single-writer lock: a second writer is refused with an error naming the holder, and the
//! lock is free again once the holder lets go.

use keel_journal::{JournalError, WriterLock};

fn scratch(name: &str) -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("keel-lock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    directory
}

#[test]
fn a_second_writer_is_refused_with_the_holder_named() {
    let directory = scratch("second");
    let first = WriterLock::acquire(&directory).expect("the directory is free");
    let text = std::fs::read_to_string(first.path()).unwrap();
    assert!(text.starts_with(&format!("pid={} host=", std::process::id())), "{text}");
    assert!(text.contains(" since=") && text.trim_end().ends_with('Z'), "{text}");

    // A second open of the file is a second lock holder to the kernel, even in this process.
    match WriterLock::acquire(&directory) {
        Err(JournalError::Locked { path, holder }) => {
            assert_eq!(path, directory.join("LOCK"));
            assert_eq!(holder, text.trim());
            let message = JournalError::Locked { path, holder }.to_string();
            assert!(message.contains("locked by another writer: pid="), "{message}");
        }
        other => panic!("expected the lock to be refused, got {other:?}"),
    }

    drop(first);
    let again = WriterLock::acquire(&directory).expect("released when the holder is dropped");
    drop(again);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn acquiring_creates_the_directory() {
    let directory = scratch("create").join("nested").join("journal");
    let lock = WriterLock::acquire(&directory).unwrap();
    assert!(lock.path().exists());
    drop(lock);
    std::fs::remove_dir_all(directory.parent().unwrap().parent().unwrap()).unwrap();
}

#[test]
fn a_directory_that_cannot_be_created_is_an_error_naming_it() {
    let blocker = scratch("blocker");
    std::fs::write(&blocker, b"a file where a directory should be").unwrap();
    match WriterLock::acquire(&blocker.join("journal")) {
        Err(error @ JournalError::Io { .. }) => {
            assert!(error.to_string().contains("keel-lock-blocker"), "{error}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    std::fs::remove_file(&blocker).unwrap();
}
