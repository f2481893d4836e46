import Foundation
import KithLMDB
import KithProfile
import KithStore
import KithStoreLMDB

/// Storage over a simulated year (issue 23): a workload whose messages span a year, with a tenth
/// of the customers replaced every day (`generate-workload.py --interval-ms 86400
/// --churn-per-day 0.1`), applied in order into one store that sweeps retention once a
/// simulated day (`--sweep-days`) and truncates its change log as a cluster does once every
/// member has read it.
/// Every 30 simulated days it prints the store's pages and the JSON bytes of the messages the
/// rules still keep; at the end it builds a second store from only the kept messages and
/// compares compacted copies of both: what a year of writes, sweeps and freed pages leaves
/// beyond what the rules keep. Every simulated hour the store compacts its file when a node's
/// rule would (`FileCompactionRule`; a node checks after every pass, hourly by default), so the
/// file is what a running node keeps; the file is sampled once a day, before the day's sweep.
struct YearBenchmark {
    let workload: String
    let scratch: String
    let durable: Bool
    let batchSize: Int
    let compactionGrowth: Double
    /// Simulated days between sweeps (`--sweep-days`; a node sweeps hourly by default).
    let sweepDays: Int

    /// Later than every message of the workload, so each message's event time is its own
    /// timestamp (an event time is never after the time a node received the message).
    static let receivedAt: Int64 = 1_800_000_000_000
    static let day: Int64 = 86_400_000
    static let hour: Int64 = 3_600_000

    /// A node's rule (`--compaction-growth`, a node's default fifth), its least bytes scaled down
    /// with the store (5,000 customers at a time, tens of megabytes; a node's default is 64 MiB).
    var compactionRule: FileCompactionRule { FileCompactionRule(freeFraction: 0.25, growthFraction: compactionGrowth, minimumFreeBytes: 1 << 20) }

    static var rules: RetentionRules {
        var rules = RetentionRules()
        rules.events = .init(millis: 30 * day, purpose: "analytics")
        rules.eventsByName["Order Completed"] = .init(millis: 7 * 366 * day, purpose: "tax")
        rules.traitsByName["city"] = .init(millis: 90 * day, purpose: "personalization")
        return rules
    }

    /// What the rules need to know of a message to say whether it is kept.
    struct Held {
        var messageId: String
        var eventName: String?
        var eventTime: Int64
        var jsonBytes: Int

        func isKept(under rules: RetentionRules, now: Int64) -> Bool {
            guard let eventName else { return true }
            return !rules.isExpired(event: eventName, at: eventTime, now: now)
        }
    }

    func run() throws {
        guard let file = FileManager.default.contents(atPath: workload) else { Options.fail("cannot read \(workload)") }
        let bytes = [UInt8](file)
        let lines = bytes.withUnsafeBufferPointer { lineRanges($0) }
        try? FileManager.default.removeItem(atPath: scratch)  // a previous run's scratch, if any
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }  // scratch; the next run removes a leftover

        let rules = Self.rules
        let store = try openScratchStore("\(scratch)/year")
        var held: [Held] = []
        var seen = Set<String>()
        /// Each line's messageId, to pick the kept lines out at the end without parsing again.
        var lineIds: [String] = []
        lineIds.reserveCapacity(lines.count)
        var firstTime: Int64?
        var nextSweep = Int64.min, nextReport = Int64.min
        var swept = RetentionStep()
        var compactions = 0
        /// The JSON bytes of the messages the store holds: those the rules kept at the last
        /// sweep, and those taken since (expired ones stay until a sweep drops them).
        var heldJSON = 0
        var peakDay = 0
        var (ratioSum, tableRatioSum, samples) = (0.0, 0.0, 0)
        /// Daily samples whose file was larger than the JSON of the messages the store held.
        var daysAbove = 0
        func compactIfDue() throws {
            let (fileBytes, usedBytes) = (store.environment.fileSize(), try store.usedBytes())
            guard compactionRule.isDue(fileBytes: fileBytes, usedBytes: usedBytes, compactedBytes: try store.compactedFileBytes()) else { return }
            try compactWhileOpen(store)
            compactions += 1
        }
        var peak = 0.0
        var nextSample = Int64.min
        var nextCompactionCheck = Int64.min
        let batches = ParsedBatches(bytes: bytes, lines: lines, batchSize: batchSize, receivedAt: Self.receivedAt)
        batches.startParsing()
        defer { batches.stop() }
        var line = 0
        var newest = Int64.min
        let applyTime = try seconds {
            while let batch = try batches.next() {
                _ = try store.apply(batch)
                for delta in batch {
                    defer { line += 1 }
                    lineIds.append(delta.messageId)
                    newest = max(newest, delta.times.eventTime)
                    guard seen.insert(delta.messageId).inserted else { continue }
                    heldJSON += lines[line].count
                    held.append(
                        Held(messageId: delta.messageId, eventName: delta.event?.name, eventTime: delta.times.eventTime, jsonBytes: lines[line].count)
                    )
                }
                let start = firstTime ?? newest
                firstTime = start
                if nextSweep == .min {
                    (nextSweep, nextReport, nextSample) = (start + Int64(sweepDays) * Self.day, start + 30 * Self.day, start + Self.day)
                    nextCompactionCheck = start + Self.hour
                }
                // The file as a day of ingest left it, before the day's sweep and compaction.
                let sampled = newest >= nextSample
                if sampled, newest - start >= 30 * Self.day {
                    let ratio = Double(store.environment.fileSize()) / Double(heldJSON)
                    if ratio > peak { (peak, peakDay) = (ratio, Int((newest - start) / Self.day)) }
                    if ratio > 1 { daysAbove += 1 }
                    let tables = Double(try store.tableBytes().values.reduce(0, +)) / Double(heldJSON)
                    (ratioSum, tableRatioSum, samples) = (ratioSum + ratio, tableRatioSum + tables, samples + 1)
                }
                if newest >= nextSweep {
                    swept.add(try sweep(store, under: rules, now: newest))
                    heldJSON = held.reduce(0) { $0 + ($1.isKept(under: rules, now: newest) ? $1.jsonBytes : 0) }
                    nextSweep += Int64(sweepDays) * Self.day
                }
                if sampled { nextSample += Self.day }
                // A node checks after every retention pass, hourly by default; so does this
                // store, while it sweeps less often (a pass reads every row).
                if newest >= nextCompactionCheck {
                    try compactIfDue()
                    while nextCompactionCheck <= newest { nextCompactionCheck += Self.hour }
                }
                if newest >= nextReport {
                    try reportDay(Int((newest - start) / Self.day), store, held: held, now: newest)
                    nextReport += 30 * Self.day
                }
            }
        }
        swept.add(try sweep(store, under: rules, now: newest))
        try compactIfDue()
        try reportDay(Int((newest - (firstTime ?? newest)) / Self.day), store, held: held, now: newest)
        report("year.apply_events_per_s", Double(lines.count) / applyTime)
        print("year.compactions: \(compactions)")
        // The largest file at a daily check after the first month, as the day's ingest left it
        // (before that day's sweep and compaction), against the JSON of the messages it held.
        report("year.peak_file_vs_held_json", peak, decimals: 2)
        print("year.peak_day: \(peakDay)")
        print("year.sampled_days: \(samples)")
        print("year.days_file_above_held_json: \(daysAbove)")
        report("year.mean_file_vs_held_json", ratioSum / Double(max(samples, 1)), decimals: 2)
        // The same samples' tables (their pages in use): what the file holds beyond them is free.
        report("year.mean_tables_vs_held_json", tableRatioSum / Double(max(samples, 1)), decimals: 2)
        print("year.events_dropped: \(swept.eventsDropped)")
        print("year.traits_dropped: \(swept.traitsDropped)")

        // The same rules over only the messages they keep, applied into a fresh store.
        let keptIds = Set(held.filter { $0.isKept(under: rules, now: newest) }.map(\.messageId))
        let keptLines = zip(lines, lineIds).filter { keptIds.contains($0.1) }.map(\.0)
        let reference = try openScratchStore("\(scratch)/kept")
        let keptBatches = ParsedBatches(bytes: bytes, lines: keptLines, batchSize: batchSize, receivedAt: Self.receivedAt)
        while let batch = try keptBatches.next() { _ = try reference.apply(batch) }
        // Passes until one deflates nothing: a first pass over a store whose rows are all plain
        // stops deflating at each step's bound, where the year's store had a pass a week.
        var referencePasses = 0
        while true {
            let pass = try sweep(reference, under: rules, now: newest)
            referencePasses += 1
            if pass.blocksDeflated + pass.rowsDeflated == 0 { break }
        }
        print("year.kept_store_sweep_passes: \(referencePasses)")

        try store.backup(to: "\(scratch)/year-compacted")
        try reference.backup(to: "\(scratch)/kept-compacted")
        let compacted = try fileBytes("\(scratch)/year-compacted/data.mdb")
        let keptCompacted = try fileBytes("\(scratch)/kept-compacted/data.mdb")
        let keptJSON = held.filter { keptIds.contains($0.messageId) }.reduce(0) { $0 + $1.jsonBytes }
        print("year.file_bytes: \(store.environment.fileSize())")
        print("year.compacted_bytes: \(compacted)")
        print("year.kept_store_compacted_bytes: \(keptCompacted)")
        print("year.kept_json_bytes: \(keptJSON)")
        report("year.size_vs_kept_store", Double(compacted) / Double(keptCompacted), decimals: 2)
        report("year.file_vs_kept_store", Double(store.environment.fileSize()) / Double(keptCompacted), decimals: 2)
        report("year.file_vs_kept_json", Double(store.environment.fileSize()) / Double(keptJSON), decimals: 2)
        report("year.size_vs_kept_json", Double(compacted) / Double(keptJSON), decimals: 2)
        print("year.profiles: \(try store.statistics().profiles)")
        print("year.identifiers: \(try store.statistics().identifiers)")
        try reportRowSizes(store, prefix: "year", messages: keptIds.count, jsonBytes: keptJSON)
    }

    private func openScratchStore(_ path: String) throws -> LMDBProfileStore {
        // A node repacks on its first pass of each day (`RepackSchedule`); this store sweeps
        // once a simulated day or less often, at the newest message's time, which need not
        // cross midnight between two sweeps: every pass repacks, as a node's first of the day.
        let configuration = StoreConfiguration(node: 1, forgetKeySecret: [UInt8](repeating: 42, count: 32), repackPeriodMillis: 3_600_000)
        var lmdb = LMDBEnvironment.Configuration()
        lmdb.durable = durable
        lmdb.mapSize = 4 << 30
        return try LMDBProfileStore(path: path, configuration: configuration, lmdb: lmdb)
    }

    /// One whole retention pass at `now`, then the change log truncated (as once every member
    /// of a cluster has read it).
    private func sweep(_ store: LMDBProfileStore, under rules: RetentionRules, now: Int64) throws -> RetentionStep {
        var total = RetentionStep()
        while true {
            let step = try store.expire(under: rules, now: now, buckets: 64)
            total.add(step)
            if step.passEnded { break }
        }
        _ = try store.truncateLog(through: .max, limit: .max)
        return total
    }

    private func reportDay(_ day: Int, _ store: LMDBProfileStore, held: [Held], now: Int64) throws {
        let name = String(format: "year.day_%03d", day)
        let pages = try store.tableBytes().values.reduce(0, +)
        let keptJSON = held.reduce(0) { $0 + ($1.isKept(under: Self.rules, now: now) ? $1.jsonBytes : 0) }
        print("\(name).file_bytes: \(store.environment.fileSize())")
        print("\(name).table_bytes: \(pages)")
        print("\(name).kept_json_bytes: \(keptJSON)")
    }

    private func fileBytes(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    }
}

/// Compacts `store`'s data file while it is open, as a node does (`FileCompactor`): start, copy,
/// swap, all on this thread (the one writer here). Returns the seconds the copy and the swap took
/// (the old file's blocks freed after it, as off a node's writer), and the milliseconds the swap
/// held the exclusive lock.
@discardableResult
func compactWhileOpen(_ store: LMDBProfileStore) throws -> (copy: Double, swap: Double, exclusiveMillis: Double) {
    guard let compaction = try store.startCompaction(waitingUpTo: 1) else { Options.fail("no moment to start a compaction") }
    let copy = try seconds { try compaction.copy() }
    var outcome = LMDBCompaction.Outcome.readersBusy
    let swap = try seconds { outcome = try store.swap(compaction, waitingUpTo: 1) }
    compaction.releaseOldFile()  // as a node does, off its writer
    guard case .swapped = outcome else { Options.fail("the compaction did not swap: \(outcome)") }
    return (copy, swap, Double(compaction.exclusiveNanoseconds) / 1e6)
}
