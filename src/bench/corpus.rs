//! Synthetic text the benches embed and ingest: varied sentences (so vectors spread like real
//! ones do) and long multi-sentence chunks. The integration tests include this file too
//! (`tests/it/docs.rs`), each using part of it.

#![allow(dead_code)]

/// The same inputs `scripts/embed_bench.py` builds: keep both in step.
pub(super) fn sentences(n: usize) -> Vec<String> {
    let subjects = [
        "The old fisherman",
        "A young doctor",
        "My neighbour",
        "The city council",
        "A tired student",
        "The museum guide",
        "Our team lead",
        "The baker",
        "A curious child",
        "The night nurse",
    ];
    let verbs = [
        "repaired",
        "painted",
        "sold",
        "photographed",
        "described",
        "borrowed",
        "cleaned",
        "measured",
        "delivered",
        "studied",
    ];
    let objects = [
        "a wooden boat",
        "the broken clock",
        "three red bicycles",
        "an ancient map",
        "the kitchen window",
        "a box of apples",
        "the village bridge",
        "a strange telescope",
        "the school garden",
        "a stack of letters",
    ];
    let places = [
        "near the harbour",
        "in the mountains",
        "before sunrise",
        "during the storm",
        "at the market",
        "in Lisbon",
        "behind the station",
        "after the festival",
        "on the island",
        "in the old library",
    ];
    let times = [
        "yesterday",
        "last week",
        "in 1998",
        "every Sunday",
        "twice",
        "at noon",
        "quietly",
        "for hours",
        "again",
        "by accident",
    ];
    (0..n)
        .map(|i| {
            let c = i % 100_000;
            format!(
                "{} {} {} {} {} (note {}).",
                subjects[c % 10],
                verbs[(c / 10) % 10],
                objects[(c / 100) % 10],
                places[(c / 1000) % 10],
                times[(c / 10_000) % 10],
                i / 100_000
            )
        })
        .collect()
}

/// A ~220-word paragraph (about 256 tokens).
pub(super) fn long_chunk(i: usize) -> String {
    sentences(i * 17 + 20)[i * 17..].join(" ")
}
