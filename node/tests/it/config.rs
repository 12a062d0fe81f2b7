//! Settings from a TOML file and environment variables, and the data directory's identity checks.

use crate::harness::Veil;

#[test]
fn toml_config_sets_the_shard_count_and_the_data_dir_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("veil-config.toml");
    std::fs::write(&config, "shards = 3\nindex_commit_interval_ms = 200\n").unwrap();
    let data = dir.path().join("data");
    let mut veil = Veil::start(&data, &["--config", config.to_str().unwrap()]);
    veil.stop();
    let recorded = std::fs::read_to_string(data.join("veil.toml")).unwrap();
    assert!(recorded.contains("shards = 3"), "{recorded}");
    assert!(recorded.contains("format_version = 2"), "{recorded}");

    // A flag wins over the file, and must still agree with what the directory recorded.
    let err = Veil::try_start(
        &data,
        &["--config", config.to_str().unwrap(), "--shards", "5"],
    )
    .err()
    .expect("must refuse");
    assert!(
        err.stderr.contains("created with 3 shards"),
        "{}",
        err.stderr
    );
}

#[test]
fn an_unknown_on_disk_format_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut veil = Veil::start(dir.path(), &[]);
    veil.stop();
    let path = dir.path().join("veil.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("format_version = 2", "format_version = 99");
    std::fs::write(&path, text).unwrap();
    let err = Veil::try_start(dir.path(), &[])
        .err()
        .expect("an unknown format must not start");
    assert!(
        err.stderr.contains("on-disk format 99"),
        "unclear error: {}",
        err.stderr
    );
}
