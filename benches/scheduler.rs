//! What the model queue costs a call when nothing waits: taking a place in a provider's
//! budget and giving it back, beside the same work on a bare mutex (the floor of any shared
//! budget) and beside no budget at all. `cargo bench --bench scheduler`; figures in
//! BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use chat_server::domain::types::Priority;
use chat_server::llm::scheduler::{Admission, CallClass, LaneLimits, Scheduler};
use criterion::{criterion_group, criterion_main, Criterion};
use uuid::Uuid;

fn scheduler(c: &mut Criterion) {
    let limits = LaneLimits {
        max_concurrent: Some(64),
        max_waiting: 1000,
        tokens_per_minute: None,
    };
    let scheduler = Scheduler::new([("default".to_string(), limits)], Duration::from_secs(30));
    let user = Uuid::now_v7();

    c.bench_function("floor: a mutex-guarded counter up and down", |b| {
        let counter = Mutex::new(0usize);
        b.iter(|| {
            *counter.lock().unwrap() += 1;
            *black_box(&counter).lock().unwrap() -= 1;
        })
    });
    c.bench_function("no budget: admit and release", |b| {
        b.iter(|| {
            black_box(scheduler.admit(
                black_box("other"),
                user,
                CallClass::Interactive,
                Priority::Normal,
                0,
            ))
        })
    });
    c.bench_function("a place at once: admit and release", |b| {
        b.iter(|| {
            let admission = scheduler.admit(
                black_box("default"),
                user,
                CallClass::Interactive,
                Priority::Normal,
                0,
            );
            match admission {
                Ok(Some(Admission::Now(permit))) => drop(black_box(permit)),
                _ => unreachable!("nothing waits"),
            }
        })
    });
    c.bench_function("early: try_admit and release", |b| {
        b.iter(|| drop(black_box(scheduler.try_admit(black_box("default"), 0))))
    });
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
