//! The decoder of ring-buffer records from the kernel: any bytes decode or
//! are refused, never a panic; a decoded record becomes a finding whose
//! JSON is valid (file names and comm are not UTF-8 in general).
#![no_main]

use imagewarden::{
    finding::Finding,
    probes::event::{decode, Record},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Record::Exec(rec)) = decode(data) else {
        return;
    };
    assert_eq!(data.len(), std::mem::size_of::<agent_common::ExecEvent>());
    assert!(rec.filename.len() < agent_common::FILENAME_LEN);
    assert!(rec.comm.len() <= agent_common::COMM_LEN);
    let f = Finding::from_exec(&rec, None);
    let line = serde_json::to_string(&f).expect("a finding serialises");
    let back: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
    assert_eq!(back["cgroup_id"], rec.cgroup_id);
});
