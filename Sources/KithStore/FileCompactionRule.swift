/// When a node gives its data file's free pages back while it serves (docs/storage.md,
/// "Compaction while serving"). LMDB reuses freed pages but never shrinks its file, which keeps
/// the most pages ever in use: the change log's before it was truncated, rows before retention
/// dropped them. A compacting copy also fills every page, where rows inserted in random key
/// order leave them about two-thirds full: soon after a compaction, inserts split the full
/// pages and the tables grow back towards that, with no page free. So a compaction is due when
/// the free pages are a large share of the file, or when the file has grown by a given share
/// since the last compaction made it; either way by at least `minimumFreeBytes`, since a
/// compaction costs about a backup (it reads and writes the pages in use).
public struct FileCompactionRule: Sendable, Equatable {
    /// The share of the file that must be free pages (the file less the tables' pages).
    public var freeFraction: Double
    /// The share by which the file must have grown past what the last compaction made it.
    public var growthFraction: Double
    /// The least bytes a compaction must stand to give back.
    public var minimumFreeBytes: Int

    /// A fifth's growth: on a year of churning customers (`kith-bench --year`, swept daily) the
    /// file averaged 1.00x the JSON of the messages it held between compactions at a fifth, and
    /// 1.19x at half (docs/benchmarks.md, "Sweeps as often as a node's").
    public init(freeFraction: Double = 0.25, growthFraction: Double = 0.2, minimumFreeBytes: Int = 64 << 20) {
        precondition(freeFraction > 0 && freeFraction < 1, "a compaction due at \(freeFraction) of the file free")
        precondition(growthFraction > 0, "a compaction due at \(growthFraction) of growth")
        precondition(minimumFreeBytes >= 0, "a compaction due at \(minimumFreeBytes) free bytes")
        self.freeFraction = freeFraction
        self.growthFraction = growthFraction
        self.minimumFreeBytes = minimumFreeBytes
    }

    /// Whether a file of `fileBytes` whose tables hold `usedBytes` of pages is due a compaction;
    /// `compactedBytes`: the file's size after the last compaction, if one ran since the node started.
    public func isDue(fileBytes: Int, usedBytes: Int, compactedBytes: Int? = nil) -> Bool {
        let free = fileBytes - usedBytes
        if free >= minimumFreeBytes && Double(free) >= freeFraction * Double(fileBytes) { return true }
        guard let compactedBytes else { return false }
        let growth = fileBytes - compactedBytes
        return growth >= minimumFreeBytes && Double(growth) >= growthFraction * Double(compactedBytes)
    }
}
