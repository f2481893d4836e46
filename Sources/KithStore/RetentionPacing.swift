/// How a node paces the steps of a retention pass: after a step that held the writer for `d`,
/// the sweeper waits `d × (1 − share) / share` before the next, so that sweeping takes at most
/// `share` of the writer's time however large the store. A step queued behind ingest bounds how
/// long a write waits for it; the share bounds what a pass costs ingest while it runs (steps
/// back to back cost a node's identify rate about a third, docs/benchmarks.md "Pacing the
/// sweep"). A pass of a large store takes longer in wall time: what it drops goes that much
/// later, and the next pass starts `retentionSweepSeconds` after it ends.
public struct RetentionPacing: Sendable, Equatable {
    /// The most of the writer's time sweeping takes, above 0 and at most 1 (1: no pause).
    public var share: Double

    public init(share: Double = 0.1) {
        precondition(share > 0 && share <= 1, "a retention sweep paced to \(share) of the writer")
        self.share = share
    }

    /// Nanoseconds to wait after a step that held the writer `stepNanoseconds`.
    public func pause(afterStepTaking stepNanoseconds: UInt64) -> UInt64 {
        guard share < 1 else { return 0 }
        return UInt64((Double(stepNanoseconds) * (1 - share) / share).rounded())
    }
}
