//! A scratch directory for unit tests, removed on drop.

use std::path::PathBuf;

pub struct Dir(pub PathBuf);

impl Dir {
    /// A fresh directory named after `tag` and this process.
    pub fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vmctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p.canonicalize().unwrap())
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }

    /// Writes `data` to `name`; its path.
    pub fn file(&self, name: &str, data: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
