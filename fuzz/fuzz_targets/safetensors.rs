//! Feeds arbitrary bytes to the safetensors and checkpoint readers. Any panic or runaway
//! allocation is a bug: a damaged file must be an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((weights, metadata)) = hyb_runtime::weights::parse("fuzz.safetensors", data) {
        let again = hyb_runtime::weights::to_bytes(&weights, &metadata);
        let (reread, _) = hyb_runtime::weights::parse("again.safetensors", &again).expect("written files read back");
        assert_eq!(reread.len(), weights.len());
    }
    let _ = hyb_runtime::train::checkpoint::decode("fuzz.safetensors", data);
});
