#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| carnet_cli::fuzzing::import_line(data));
