//! Files that hold secrets (bootstrap tokens): read only when no one but
//! their owner can read or write them, as `ssh` treats a private key.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Reads the secret in `path`, refusing a file that its group or others may
/// read or write (the mode must be 0600 or 0400): a token others can read is
/// a token others have. The error names the file and its mode.
pub fn read_secret(path: &Path) -> io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {mode:04o}: a secret must be readable by its owner only (chmod 600 it)",
                path.display()
            ),
        ));
    }
    io::read_to_string(file)
}

/// Writes `secret` to `path` with mode 0600 (created so, never wider).
pub fn write_secret(path: &Path, secret: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: narrow it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_only_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("has mode 0644"), "{e}");
        write_secret(&path, "n3w").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret(&path).unwrap(), "n3w");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_secret(&path).unwrap(), "n3w");
    }
}
