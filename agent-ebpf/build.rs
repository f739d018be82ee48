// Present only so that the pinned aya-build build-dependency is part of the graph.
fn main() {}
