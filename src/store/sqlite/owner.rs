//! Who holds a reservation, and whether that process is still alive.
//!
//! Every process that writes to a store file claims an owner id and holds
//! an exclusive lock on `<store>.owners/<id>.lock` for as long as it runs.
//! The kernel drops the lock when the process ends, however it ends
//! (`kill -9` included), so a lock another process can take proves its
//! owner gone. Processes sharing a SQLite file share a machine (SQLite
//! does not support network filesystems), so this is always decidable.
//!
//! A lock file appears under its final name only once locked (it is
//! created and locked under a temporary name, then renamed), so a file
//! that can be locked never belongs to a process still starting.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use super::unavailable;
use crate::sessions::credential::OwnerStatus;
use crate::store::StoreError;

/// This process's claim on a store.
pub(super) struct Owner {
    id: String,
    dir: PathBuf,
    _lock: File,
}

impl Owner {
    /// Claims a new owner id beside the store at `db`.
    pub fn claim(db: &Path) -> Result<Self, StoreError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".owners");
        let dir = PathBuf::from(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| unavailable(format!("no randomness: {e}")))?;
        let id = format!("own_{}", hex::encode(random));
        let staging = dir.join(format!(".{id}.new"));
        let lock = File::create(&staging)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", staging.display())))?;
        lock.try_lock()
            .map_err(|e| unavailable(format!("cannot lock {}: {e}", staging.display())))?;
        std::fs::rename(&staging, dir.join(format!("{id}.lock")))
            .map_err(|e| unavailable(format!("cannot publish the owner lock: {e}")))?;
        Ok(Self {
            id,
            dir,
            _lock: lock,
        })
    }

    /// This process's owner id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the process behind `owner` is still alive.
    pub fn status(&self, owner: Option<&str>) -> OwnerStatus {
        let Some(owner) = owner else {
            // Reserved before owners were recorded: by a process that has
            // ended since (this store format is newer than it).
            return OwnerStatus::Gone;
        };
        if owner == self.id {
            return OwnerStatus::Alive;
        }
        if !valid_id(owner) {
            return OwnerStatus::Unknown;
        }
        match File::open(self.dir.join(format!("{owner}.lock"))) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OwnerStatus::Gone,
            Err(_) => OwnerStatus::Unknown,
            Ok(file) => match file.try_lock() {
                Ok(()) => OwnerStatus::Gone,
                Err(TryLockError::WouldBlock) => OwnerStatus::Alive,
                Err(TryLockError::Error(_)) => OwnerStatus::Unknown,
            },
        }
    }

    /// Removes the lock files of owners that are gone.
    pub fn tidy(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
                continue;
            };
            if valid_id(id) && self.status(Some(id)) == OwnerStatus::Gone {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Unlinked while still locked: nobody sees it lockable first.
        let _ = std::fs::remove_file(self.dir.join(format!("{}.lock", self.id)));
    }
}

fn valid_id(id: &str) -> bool {
    id.strip_prefix("own_")
        .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_owner_is_alive_and_a_dropped_one_gone() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let a = Owner::claim(&db).unwrap();
        let b = Owner::claim(&db).unwrap();
        assert_eq!(a.status(Some(b.id())), OwnerStatus::Alive);
        assert_eq!(a.status(Some(a.id())), OwnerStatus::Alive);
        let gone = b.id().to_owned();
        drop(b);
        assert_eq!(a.status(Some(&gone)), OwnerStatus::Gone);
        assert_eq!(a.status(None), OwnerStatus::Gone);
        assert_eq!(a.status(Some("../etc")), OwnerStatus::Unknown);
    }
}
