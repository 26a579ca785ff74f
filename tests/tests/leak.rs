//! 200 run/delete cycles leave the machine as they found it: mounts, cgroups, state
//! directories, processes, this process's fds and zombie children. A test binary of its
//! own with a single test, since it counts machine-wide things.

use std::time::Instant;

use skiff_tests::*;

const CYCLES: usize = 200;

#[test]
fn run_delete_cycles_leak_nothing() {
    let rt = Runtime::exclusive();
    let mut b = Bundle::new();
    b.args(&["/bin/true"]);
    b.save();
    let bundle = b.path().to_str().unwrap().to_string();
    let cycle = |i: usize| {
        let id = rt.id(&format!("leak{i}"));
        if i & 1 == 0 {
            // Foreground run removes the container itself; delete --force is then a no-op.
            rt.cmd(&["run", "--bundle", &bundle, &id]).ok();
            assert!(rt.cmd(&["state", &id]).fails().stderr.to_lowercase().contains("not exist"));
        } else {
            rt.cmd(&["run", "--detach", "--bundle", &bundle, &id]).ok();
            rt.cmd(&["delete", "--force", &id]).ok();
        }
    };
    // Warm up: anything made once per machine (parent cgroups, state root) is made now.
    cycle(0);
    cycle(1);
    let before = settled_snapshot(&rt);
    let start = Instant::now();
    for i in 2..CYCLES + 2 {
        cycle(i);
    }
    eprintln!("{CYCLES} cycles in {:?}", start.elapsed());
    let after = settled_snapshot(&rt);
    before.assert_unchanged(&after, &format!("{CYCLES} run/delete cycles"));
    assert!(rt.state_entries().is_empty(), "{:?}", rt.state_entries());
}
