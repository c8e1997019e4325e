//! The CPU op checks of `emberlm_cpu::checks` natively, for every SIMD level this CPU runs (the
//! wasm self-test runs the same ones in Chromium, Node, Deno and Bun), with two threads so the
//! work is split.

#[test]
fn every_cpu_op_matches_the_reference() {
    emberlm_cpu::CpuDevice::new(Some(2));
    let results = emberlm_cpu::checks::run_all();
    for (name, r) in &results {
        eprintln!("{} {name}", if r.is_ok() { "ok  " } else { "FAIL" });
    }
    let failed: Vec<_> = results.into_iter().filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}"))).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(emberlm_cpu::matvec::RowKernels::available().len() >= 2, "at least one SIMD level and the portable loops");
}
