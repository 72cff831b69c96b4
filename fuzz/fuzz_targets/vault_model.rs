#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| carnet_core::fuzzing::vault_model(data));
