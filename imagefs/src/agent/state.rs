//! The agent's VM table on disk ([`manifest::agent::AgentState`]).
//!
//! Every change rewrites the whole file atomically: the new table goes to
//! a temporary file in the same directory, is fsynced, renamed over the
//! old one, and the directory is fsynced. A crash (kill -9 included)
//! leaves the old table or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use manifest::agent::{AgentState, StateError};

use super::AgentError;

/// Why a state file was not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// It could not be read.
    #[error("reading the agent state file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It is not a state file this build reads.
    #[error("the agent state file {} is unusable", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: StateError,
    },
}

/// The state file at one path.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file at `path` (nothing is read or written yet).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table; an empty one when there is no file.
    pub fn load(&self) -> Result<AgentState, LoadError> {
        match fs::read(&self.path) {
            Ok(bytes) => AgentState::decode(&bytes).map_err(|source| LoadError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(AgentState::new(Vec::new())),
            Err(source) => Err(LoadError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Moves an unusable file to `PATH.corrupt` (replacing an older one),
    /// so it can be looked at and the next save does not destroy it.
    pub fn set_aside(&self) {
        let mut aside = self.path.clone().into_os_string();
        aside.push(".corrupt");
        if let Err(e) = fs::rename(&self.path, &aside)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(
                "cannot set the state file {} aside: {e}",
                self.path.display()
            );
        }
    }

    /// Replaces the file with `state`, atomically (module docs).
    pub fn save(&self, state: &AgentState) -> Result<(), AgentError> {
        let io = |what: &str| {
            let what = format!("{what} {}", self.path.display());
            move |source| AgentError::Io { what, source }
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&state.encode())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io("writing a new")(e));
        }
        fs::rename(&tmp, &self.path).map_err(io("replacing"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory of"))
    }
}

#[cfg(test)]
mod tests {
    use manifest::agent::{VmRecord, VmSpec};

    use super::*;

    #[test]
    fn saves_loads_and_sets_a_corrupt_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        assert!(file.load().unwrap().vms.is_empty(), "no file: no VMs");
        let state = AgentState::new(vec![VmRecord {
            spec: VmSpec {
                id: "a".into(),
                image: "t".into(),
                writable: false,
                dedicated: None,
                queues: None,
                domain: None,
            },
            digest: "sha256:00".into(),
            created_unix_ms: 1,
        }]);
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), state);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temporary file is left");

        fs::write(file.path(), b"{\"format\":\"imagefs-agent-state\",\"vers").unwrap();
        let err = file.load().unwrap_err();
        assert!(matches!(err, LoadError::Corrupt { .. }), "{err}");
        file.set_aside();
        assert!(dir.path().join("state.json.corrupt").exists());
        assert!(file.load().unwrap().vms.is_empty());
    }
}
