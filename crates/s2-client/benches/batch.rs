//! Batch builder + append-body serialization throughput for 1 KB JSON records.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use s2sink_client::{pack, AppendInput, AppendRecord, BatchBuilder, BatchLimits, GroupCost};

const RECORDS: usize = 100_000;

/// A ~1 KB JSON message with quotes (escaped in the body) and two headers.
fn record(i: usize) -> AppendRecord {
    let pad = "x".repeat(900);
    AppendRecord::new(format!(
        r#"{{"id":{i},"table":"orders","op":"update","data":{{"customer":"c-{i}","note":"{pad}"}}}}"#
    ))
    .with_header("content-type", "application/json")
    .with_header("msg-id", format!("m-{i}"))
}

fn bench(c: &mut Criterion) {
    let records: Vec<AppendRecord> = (0..RECORDS).map(record).collect();
    let avg = records.iter().map(|r| r.body.len()).sum::<usize>() / RECORDS;
    let mut group = c.benchmark_group(format!("batch_{RECORDS}x{avg}B"));
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);

    group.bench_function("pack", |b| {
        b.iter_batched(
            || records.clone(),
            |r| black_box(pack(r).unwrap()),
            BatchSize::LargeInput,
        )
    });

    group.bench_function("pack_and_serialize", |b| {
        b.iter_batched(
            || records.clone(),
            |r| {
                let mut bytes = 0;
                for batch in pack(r).unwrap() {
                    let input = AppendInput::new(batch).with_match_seq_num(42);
                    bytes += serde_json::to_vec(&input).unwrap().len();
                }
                black_box(bytes)
            },
            BatchSize::LargeInput,
        )
    });

    group.bench_function("builder_fits_then_push_groups_of_4", |b| {
        b.iter_batched(
            || records.clone(),
            |r| {
                let mut builder = BatchBuilder::new(BatchLimits::default());
                let mut batches = 0;
                let mut it = r.into_iter().peekable();
                while it.peek().is_some() {
                    let g: Vec<_> = it.by_ref().take(4).collect();
                    if !builder.fits(&GroupCost::of(&g)) {
                        black_box(builder.take());
                        batches += 1;
                    }
                    if let Some(done) = builder.push_group(g).unwrap() {
                        black_box(done);
                        batches += 1;
                    }
                }
                black_box(batches)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
