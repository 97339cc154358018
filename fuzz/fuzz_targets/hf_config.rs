//! Feeds arbitrary text to the Hugging Face `config.json` importer. Any panic is a bug; an
//! accepted config must give a `.hyb` model and a `config.json` that reads back the same.
#![no_main]

use hyb_runtime::hf::FalconConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = FalconConfig::from_json(text) else { return };
    let _ = cfg.to_hyb("fuzz", "fuzz");
    let back = FalconConfig::from_json(&cfg.to_json().to_string()).expect("an exported config imports");
    assert_eq!(back, cfg, "config.json does not round-trip");
});
