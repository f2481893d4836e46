import Foundation
import KithAPI
import KithCRDT
import KithJSON
import KithLMDB
import KithPolicy
import Synchronization

/// A stored read names a shape that is not there: the audit environment is damaged.
struct AuditShapeMissing: Error {}

/// The read audit of one node, in an LMDB environment of its own (so that audit writes never
/// wait for, or hold up, the profile writer).
///
/// - Reads hand their records to `record`, which only appends to a queue. A writer thread
///   commits the queue every `flushInterval` in one durable transaction to `records`, keyed by
///   time and sequence, so these writes are appends: a few pages a commit, however many records.
///   A crash loses at most the records of the last interval (docs/privacy.md says so).
/// - The index by subject is derived from `records` by index passes (every `indexIntervalMillis`,
///   or sooner after `indexBatch` records), each of which sorts its rows and appends them as one
///   run (`AuditIndex.swift`); runs are merged a level up `fanIn` at a time, in chunks, between
///   the commits of records. A watermark committed with each run says how far the index goes; a
///   query indexes the rest first, and after a crash the next pass picks up where it stopped.
/// - A failed commit keeps its batch queued; if the queue fills, `record` refuses and the read
///   is answered 503, because a read that cannot be audited must not be served.
/// - Records older than the retention are swept once a minute, with the runs that index only them.
public final class ReadAudit: APIReadAudit, @unchecked Sendable {
    static let flushInterval: DispatchTimeInterval = .milliseconds(10)
    static let indexIntervalMillis: Int64 = 1_000
    /// Records a pass indexes in one run (and the backlog that starts a pass early).
    static let indexBatch = 50_000
    /// Records waiting for their commit before reads are refused: about five seconds of reads
    /// at full speed, to ride out a slow sync of the disk (each record is about 250 bytes here).
    static let queueLimit = 250_000
    /// Index rows deleted in one transaction (rows of merged or expired runs).
    static let deletionChunk = 50_000
    /// A turn of the audit thread that takes this long is logged.
    static let slowTurnMillis: Int64 = 250

    private let environment: LMDBEnvironment
    private let records: LMDBDatabase
    private let meta: LMDBDatabase
    private let shapes: LMDBDatabase
    /// The registry of complete runs: `level ‖ id` → rows, first and last record key.
    private let runsTable: LMDBDatabase
    /// The rows of each level's runs.
    private let levelTables: [LMDBDatabase]
    /// Keys of shapes already stored, so a repeated shape costs a dictionary lookup. Touched
    /// only under `writeLock`; emptied when it grows past `shapeCacheLimit`.
    private var storedShapes: [[UInt8]: [UInt8]] = [:]
    static let shapeCacheLimit = 10_000
    private let retentionMillis: Int64
    private let queueState = Mutex<(queue: AuditQueue<PendingAuditRecord>, stopped: Bool)>((AuditQueue(limit: ReadAudit.queueLimit), false))
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let runsInBackground: Bool
    private let log: Log
    /// Serialises this audit's write transactions; `sequence`, `merge` and the counters below
    /// are touched only under it.
    private let writeLock = Mutex<Void>(())
    /// Orders records of the same millisecond; continues after the newest stored record.
    private var sequence: UInt64 = 0
    /// The time part of the newest key. Keys never go back in time (a read that took its time
    /// just before another's may be queued after it, and clocks step back), so every key is
    /// greater than the last and `records` is written by appending.
    private var lastKeyTime: UInt64 = 0
    private var lastSweep: Int64 = 0
    private var lastIndex: Int64 = 0
    private var unindexed = 0
    private var merge: AuditMerge?
    /// Unregistered runs whose rows are still to be deleted, a chunk a turn (a query no longer
    /// sees them; after a crash, the next open deletes them).
    private var unregistered: [AuditRun] = []
    /// Rows a merge writes in one transaction (smaller in tests, to cut merges into chunks).
    var mergeChunkRows = 100_000
    private var failing = false
    public let written = Atomic<Int>(0)

    private static let watermarkKey = Array("indexed".utf8)
    private static let nextRunKey = Array("next-run".utf8)
    private static let formatKey = Array("format".utf8)
    /// 2: the subject index as runs. 1 had one `subjects` table, which is derived data: it is
    /// dropped and the index rebuilt from the records.
    static let format: [UInt8] = [2]

    /// An audit environment of an unknown layout is refused rather than misread.
    private func checkFormat() throws {
        let (format, empty) = try environment.read { txn in (try txn.get(meta, Self.formatKey), try txn.count(records) == 0) }
        switch format {
        case Self.format?: return
        case nil where empty: try environment.write { txn in try txn.put(meta, Self.formatKey, Self.format) }
        case [1]?:
            let old = try environment.database(named: "subjects")
            try environment.write { txn in
                try txn.drop(old)
                _ = try txn.delete(meta, Self.watermarkKey)
                try txn.put(meta, Self.formatKey, Self.format)
            }
        default:
            throw ConfigurationError("the read audit at \(environment.path) has a layout this version does not read; move it away to start a new one")
        }
    }

    /// `runsInBackground` false leaves flushing, indexing and merging to explicit calls (tests).
    public init(path: String, retentionDays: Int, log: Log, runsInBackground: Bool = true) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        var configuration = LMDBEnvironment.Configuration()
        configuration.mapSize = 64 << 20
        configuration.maximumDatabases = UInt32(AuditIndexLayout.levels + 8)
        let environment = try LMDBEnvironment(path: path, configuration: configuration)
        self.environment = environment
        records = try environment.database(named: "records")
        meta = try environment.database(named: "meta")
        shapes = try environment.database(named: "shapes")
        runsTable = try environment.database(named: "runs")
        levelTables = try (0..<AuditIndexLayout.levels).map { try environment.database(named: AuditIndexLayout.tableName(level: $0)) }
        retentionMillis = Int64(retentionDays) * 86_400_000
        self.log = log
        self.runsInBackground = runsInBackground
        lastSweep = unixMillis()
        try checkFormat()
        try deleteUnregisteredRows()
        if let last = try environment.read({ txn in try txn.lastKey(records) }) {
            lastKeyTime = integer(last[..<8])
            sequence = integer(last[8...])
        }
        guard runsInBackground else { return }
        let thread = Thread { [self] in run() }
        thread.name = "kith-audit"
        thread.start()
    }

    /// Queues a record; it is durable within `flushInterval`. Throws when the audit is failing
    /// and its queue is full: the caller must not serve the read.
    public func record(_ record: AuditRecord) throws {
        let pending = PendingAuditRecord(time: record.time, subjects: record.subjects, shape: record.shape.encoded())
        let accepted = queueState.withLock { $0.queue.append(pending) }
        guard accepted else { throw AuditUnavailable() }
    }

    /// Records whose subjects include any of `subjects`, newest first, at most `limit`.
    public func records(about wanted: [[UInt8]], limit: Int) throws -> [AuditRecord] {
        try flush()
        try index()
        let wanted = Set(wanted)
        return try environment.read { txn in
            var keys = Set<[UInt8]>()
            for run in try registeredRuns(txn) {
                for subject in wanted {
                    try txn.scan(levelTables[run.level], prefix: AuditIndexLayout.row(run: run.id, subject: subject, recordKey: [])) { row, _ in
                        keys.insert(AuditIndexLayout.recordKey(ofRow: row))
                        return .next
                    }
                }
            }
            var found: [AuditRecord] = []
            var shapesRead: [[UInt8]: AuditShape] = [:]
            for key in keys.sorted(by: { $1.lexicographicallyPrecedes($0) }) where found.count < limit {
                // Absent: swept, while a run that also indexes newer records still lists it.
                guard let bytes = try txn.get(records, key) else { continue }
                let stored = try StoredAuditRecord.decode(bytes)
                // The index keeps a prefix of each hash: confirm the whole hash.
                guard stored.subjects.contains(where: wanted.contains) else { continue }
                if shapesRead[stored.shapeKey] == nil {
                    guard let shape = try txn.get(shapes, stored.shapeKey) else { throw AuditShapeMissing() }
                    shapesRead[stored.shapeKey] = try AuditShape(decoding: shape)
                }
                found.append(AuditRecord(time: stored.time, subjects: stored.subjects, shape: shapesRead[stored.shapeKey]!))
            }
            return found
        }
    }

    public var queue: (records: Int, limit: Int) { queueState.withLock { ($0.queue.pending.count, $0.queue.limit) } }

    /// Commits whatever is queued now. A batch that fails stays queued, ahead of newer records.
    public func flush() throws {
        try writeLock.withLock { _ in
            let batch = queueState.withLock { $0.queue.take() }
            guard !batch.isEmpty else { return }
            do {
                try write(batch)
            } catch {
                queueState.withLock { $0.queue.putBack(batch) }
                throw error
            }
        }
    }

    /// Brings the subject index up to the newest committed record.
    public func index() throws {
        try writeLock.withLock { _ in
            lastIndex = unixMillis()
            unindexed = 0
            while try indexPass(limit: Self.indexBatch) == Self.indexBatch {}
        }
    }

    /// Runs one chunk of index maintenance: deleting rows of unregistered runs first, else the
    /// pending merge (starting the next merge if none is under way). Returns false when there
    /// was nothing to do. One chunk a call, so that the audit thread commits records between.
    @discardableResult
    func mergeStep(now: Int64 = unixMillis()) throws -> Bool {
        try writeLock.withLock { _ in
            if let run = unregistered.first {
                if try deleteChunk(of: run.id, level: run.level) < Self.deletionChunk { unregistered.removeFirst() }
                return true
            }
            if merge == nil {
                guard let sources = try AuditIndexLayout.nextMerge(environment.read(registeredRuns)) else { return false }
                let cutoff = bigEndian(UInt64(clamping: now - retentionMillis))
                merge = try environment.write { txn in AuditMerge(sources: sources, id: try allocateRun(txn), cutoff: cutoff) }
            }
            var next = merge!
            let done = try environment.write { txn in
                // On a copy: `write` may run this again from the start after growing the map.
                next = merge!
                guard try next.step(txn, tables: levelTables, limit: mergeChunkRows) else { return false }
                for source in next.sources { _ = try txn.delete(runsTable, source.registryKey) }
                if next.target.rows > 0 { try txn.put(runsTable, next.target.registryKey, next.target.encodedValue()) }
                return true
            }
            merge = done ? nil : next
            if done { unregistered += next.sources }
            return true
        }
    }

    /// The complete runs, level by level, oldest first.
    func runs() throws -> [AuditRun] { try environment.read(registeredRuns) }

    public func stop() {
        queueState.withLock { $0.stopped = true }
        guard runsInBackground else {
            do {
                try flush()
                try index()
            } catch {
                log(.error, "read audit not flushed at stop", [("error", .string("\(error)"))])
            }
            return
        }
        wakeup.signal()
        finished.wait()
    }

    private func run() {
        while true {
            _ = wakeup.wait(timeout: .now() + Self.flushInterval)
            let stopping = queueState.withLock { $0.stopped }
            do {
                let started = unixMillis()
                try flush()
                let flushed = unixMillis()
                if stopping || indexDue() { try index() }
                let indexed = unixMillis()
                // One chunk a turn, so that records keep being committed every interval.
                if !stopping { try mergeStep() }
                let merged = unixMillis()
                try sweepIfDue()
                // Records wait in the queue for as long as a turn takes; a slow one is worth a line.
                if unixMillis() - started >= Self.slowTurnMillis {
                    log(
                        .info, "audit turn was slow",
                        [
                            ("flush_ms", .number(JSONNumber(flushed - started))), ("index_ms", .number(JSONNumber(indexed - flushed))),
                            ("merge_ms", .number(JSONNumber(merged - indexed))), ("sweep_ms", .number(JSONNumber(unixMillis() - merged))),
                        ])
                }
                if failing { log(.info, "audit writes recovered", []) }
                failing = false
            } catch {
                if !failing { log(.error, "audit write failed; reads are refused once the queue is full", [("error", .string("\(error)"))]) }
                failing = true
            }
            if stopping {
                finished.signal()
                return
            }
        }
    }

    private func indexDue() -> Bool {
        writeLock.withLock { _ in unindexed >= Self.indexBatch || unixMillis() - lastIndex >= Self.indexIntervalMillis }
    }

    /// Appends the batch to `records` in one durable transaction. Caller holds `writeLock`.
    private func write(_ batch: [PendingAuditRecord]) throws {
        var next = sequence
        var keyTime = lastKeyTime
        var newShapes: [[UInt8]: [UInt8]] = [:]
        try environment.write { txn in
            // Everything from the start: `write` may run this again after growing the map.
            (next, keyTime, newShapes) = (sequence, lastKeyTime, [:])
            for record in batch {
                next += 1
                keyTime = max(keyTime, UInt64(clamping: record.time))
                let shapeKey = try storedShapeKey(record.shape, txn, &newShapes)
                try txn.put(
                    records, bigEndian(keyTime) + bigEndian(next),
                    StoredAuditRecord.encode(time: record.time, subjects: record.subjects, shapeKey: shapeKey), mode: .append)
            }
        }
        // Only shapes of a committed transaction are remembered as stored.
        if storedShapes.count + newShapes.count > Self.shapeCacheLimit { storedShapes.removeAll(keepingCapacity: true) }
        storedShapes.merge(newShapes) { old, _ in old }
        sequence = next
        lastKeyTime = keyTime
        unindexed += batch.count
        written.wrappingAdd(batch.count, ordering: .relaxed)
    }

    /// The key of a stored shape, storing it first if it is not known to be stored.
    private func storedShapeKey(_ shape: [UInt8], _ txn: LMDBWriteTransaction, _ newShapes: inout [[UInt8]: [UInt8]]) throws -> [UInt8] {
        if let key = storedShapes[shape] ?? newShapes[shape] { return key }
        let key = AuditShape.key(ofEncoded: shape)
        try txn.put(shapes, key, shape)
        newShapes[shape] = key
        return key
    }

    /// Indexes up to `limit` records after the watermark as one new run of level 0, moving the
    /// watermark in the same transaction. Returns how many it indexed. Caller holds `writeLock`.
    private func indexPass(limit: Int) throws -> Int {
        try environment.write { txn in
            let watermark = try txn.get(meta, Self.watermarkKey) ?? []
            var rows: [(subject: [UInt8], record: [UInt8])] = []
            var done = 0
            var (first, last): ([UInt8]?, [UInt8]) = (nil, watermark)
            try txn.scan(records, from: watermark) { key, value in
                if key == watermark { return .next }
                for subject in try Self.distinctPrefixes(StoredAuditRecord.subjects(ofEncoded: value)) { rows.append((subject, key)) }
                first = first ?? key
                last = key
                done += 1
                return done < limit ? .next : .stop
            }
            guard let first else { return 0 }
            if !rows.isEmpty {
                rows.sort {
                    $0.subject == $1.subject ? $0.record.lexicographicallyPrecedes($1.record) : $0.subject.lexicographicallyPrecedes($1.subject)
                }
                let run = AuditRun(level: 0, id: try allocateRun(txn), rows: rows.count, firstRecord: first, lastRecord: last)
                for row in rows {
                    try txn.put(levelTables[0], AuditIndexLayout.row(run: run.id, subject: row.subject, recordKey: row.record), [], mode: .append)
                }
                try txn.put(runsTable, run.registryKey, run.encodedValue())
            }
            try txn.put(meta, Self.watermarkKey, last)
            return done
        }
    }

    /// A new run id: ids grow, so every run's rows are appended after its level's others.
    private func allocateRun(_ txn: LMDBWriteTransaction) throws -> UInt64 {
        let next = try txn.get(meta, Self.nextRunKey).map { integer($0[...]) } ?? 0
        try txn.put(meta, Self.nextRunKey, bigEndian(next + 1))
        return next
    }

    private func registeredRuns(_ txn: LMDBReadTransaction) throws -> [AuditRun] {
        var runs: [AuditRun] = []
        try txn.scan(runsTable) { key, value in
            runs.append(try AuditRun(registryKey: key, value: value))
            return .next
        }
        return runs
    }

    /// Deletes up to `deletionChunk` of a run's rows in one transaction; returns how many.
    private func deleteChunk(of id: UInt64, level: Int) throws -> Int {
        try environment.write { txn in try txn.deletePrefix(levelTables[level], bigEndian(id), limit: Self.deletionChunk) }
    }

    /// Rows of runs the registry does not list: a merge a crash interrupted, or the sources of
    /// one whose deletion it interrupted. Runs at open.
    private func deleteUnregisteredRows() throws {
        let registered = Set(try runs().map(\.registryKey))
        for level in 0..<AuditIndexLayout.levels {
            var from: [UInt8] = []
            while let row = try environment.read({ txn in try Self.firstKey(txn, levelTables[level], from: from) }) {
                let id = integer(row.prefix(8))
                if !registered.contains([UInt8(level)] + bigEndian(id)) {
                    while try deleteChunk(of: id, level: level) == Self.deletionChunk {}
                }
                guard id < UInt64.max else { break }
                from = bigEndian(id + 1)
            }
        }
    }

    private static func firstKey(_ txn: LMDBReadTransaction, _ table: LMDBDatabase, from: [UInt8]) throws -> [UInt8]? {
        var found: [UInt8]?
        try txn.scan(table, from: from) { key, _ in
            found = key
            return .stop
        }
        return found
    }

    /// Sweeps once a minute (the first a minute after start).
    private func sweepIfDue() throws {
        let now = unixMillis()
        guard now - lastSweep >= 60_000 else { return }
        lastSweep = now
        try sweep(now: now)
    }

    /// Deletes records older than the retention, in transactions of 10,000 so that commits of
    /// new records are not held up long, and the runs that index nothing newer. Rows of older
    /// records in runs that also index newer ones stay until a merge leaves them out (a query
    /// skips them: their records are gone). Returns how many records it deleted.
    @discardableResult
    func sweep(now: Int64) throws -> Int {
        let cutoff = bigEndian(UInt64(clamping: now - retentionMillis))
        var total = 0
        while true {
            let deleted = try writeLock.withLock { _ in try environment.write { txn in try sweepBatch(txn, before: cutoff, limit: 10_000) } }
            total += deleted
            if deleted < 10_000 { break }
        }
        try writeLock.withLock { _ in
            let expired = try runs().filter { $0.lastRecord.lexicographicallyPrecedes(cutoff) && !(merge?.sources.contains($0) ?? false) }
            guard !expired.isEmpty else { return }
            try environment.write { txn in
                for run in expired { _ = try txn.delete(runsTable, run.registryKey) }
            }
            unregistered += expired
        }
        return total
    }

    /// How many records, index rows and shapes are stored (for tests and status).
    func counts() throws -> (records: Int, indexRows: Int, shapes: Int) {
        try environment.read { txn in
            (try txn.count(records), try levelTables.reduce(0) { $0 + (try txn.count($1)) }, try txn.count(shapes))
        }
    }

    private func sweepBatch(_ txn: LMDBWriteTransaction, before cutoff: [UInt8], limit: Int) throws -> Int {
        var expired: [[UInt8]] = []
        try txn.scan(records) { key, _ in
            guard key.lexicographicallyPrecedes(cutoff) else { return .stop }
            expired.append(key)
            return expired.count < limit ? .next : .stop
        }
        for key in expired { _ = try txn.delete(records, key) }
        return expired.count
    }

    /// The index prefixes of a record's subjects, each once. A record has a handful of
    /// subjects: comparing them pairwise costs less than hashing every byte into a set.
    static func distinctPrefixes(_ subjects: [ArraySlice<UInt8>]) -> [[UInt8]] {
        var prefixes: [[UInt8]] = []
        for subject in subjects {
            let prefix = Array(subject.prefix(AuditIndexLayout.prefixSize))
            if !prefixes.contains(prefix) { prefixes.append(prefix) }
        }
        return prefixes
    }
}
