//! Issue 14: `complete` on a waiting task with an organisation of 10,000 people in 500 units
//! (scoped role reference, skill and work-list index on the way), beside the same call on an
//! engine without one.

mod common;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput};
use procflow::{Actor, Config, Engine, Organisation, ProcessDef, Vars};
use serde_json::json;

use common::{SCOPED, org_yaml, scoped_def};

/// An engine with the scoped definition; without an organisation nobody has skills, so the
/// definition there has none.
fn engine(org: Option<Organisation>) -> Engine {
    let def = match org {
        Some(_) => scoped_def(),
        None => scoped_def().replace("    skills: [fiber_splicing]\n", ""),
    };
    let mut config = Config::default();
    config.retain_completed = false;
    let mut b = Engine::builder();
    b.config(config);
    if let Some(org) = org {
        b.organisation(org);
    }
    let engine = b.build();
    engine
        .deploy(ProcessDef::from_yaml(&def).expect("parses"))
        .expect("deploys");
    engine
}

fn complete(c: &mut Criterion) {
    let org = Organisation::from_yaml(&org_yaml(489, 10_000)).expect("the organisation loads");
    assert_eq!(org.units().len(), 500);
    assert_eq!(org.people().len(), 10_000);
    let mut g = c.benchmark_group("org_complete");
    g.throughput(Throughput::Elements(1));
    for (name, engine, actor) in [
        // p7 holds network_ops in net7, where every instance is.
        (
            "organisation_10k_people_500_units",
            engine(Some(org)),
            Actor::new("p7", [""; 0]),
        ),
        (
            "no_organisation",
            engine(None),
            Actor::new("p7", ["network_ops"]),
        ),
    ] {
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let mut vars = Vars::new();
                    vars.insert("local_network".into(), json!("net7"));
                    let id = engine.start(SCOPED, vars).expect("starts");
                    engine.tasks(id).expect("tasks")[0].id
                },
                |task| {
                    engine
                        .complete(task, &actor, Vars::new())
                        .expect("completes");
                },
                BatchSize::SmallInput,
            )
        });
        black_box(n);
    }
    g.finish();
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without their undocumented public
    // function (the crate denies missing docs).
    let mut c = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .configure_from_args();
    complete(&mut c);
    c.final_summary();
}
