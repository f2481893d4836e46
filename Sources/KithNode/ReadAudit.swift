import Foundation
import KithCRDT
import KithLMDB
import KithPolicy
import Synchronization

/// The audit could not keep up or could not write: reads are refused (503) until it recovers.
public struct AuditUnavailable: Error {}

/// A stored read names a shape that is not there: the audit environment is damaged.
struct AuditShapeMissing: Error {}

/// The read audit of one node, in an LMDB environment of its own (so that audit writes never
/// wait for, or hold up, the profile writer).
///
/// - Reads hand their records to `record`, which only appends to a queue. A writer thread
///   commits the queue every `flushInterval` in one durable transaction to `records`, keyed by
///   time and sequence, so these writes are appends: a few pages a commit, however many records.
///   A crash loses at most the records of the last interval (docs/privacy.md says so).
/// - The index by subject (`subjects`: 16 bytes of the keyed hash, then the record key) is
///   derived from `records` and updated every `indexIntervalMillis` (or after `indexBacklog`
///   records) in large batches: its keys are random, so each row dirties its own page, and
///   large batches share pages where small ones would not. A watermark committed with the rows says how far it goes; a query indexes the
///   rest first, and after a crash the next pass picks up where the watermark stopped.
/// - A failed commit keeps its batch queued; if the queue fills, `record` refuses and the read
///   is answered 503, because a read that cannot be audited must not be served.
/// - Records older than the retention are swept once a minute.
public final class ReadAudit: @unchecked Sendable {
    static let flushInterval: DispatchTimeInterval = .milliseconds(10)
    static let indexIntervalMillis: Int64 = 10_000
    /// Index sooner when this many records wait, so that a query never has much to catch up.
    static let indexBacklog = 200_000
    static let queueLimit = 100_000
    static let subjectPrefix = 16

    private let environment: LMDBEnvironment
    private let records: LMDBDatabase
    private let subjects: LMDBDatabase
    private let meta: LMDBDatabase
    private let shapes: LMDBDatabase
    /// Keys of shapes already stored, so a repeated shape costs a dictionary lookup. Touched
    /// only under `writeLock`; emptied when it grows past `shapeCacheLimit`.
    private var storedShapes: [[UInt8]: [UInt8]] = [:]
    static let shapeCacheLimit = 10_000
    private let retentionMillis: Int64
    private let queue = Mutex<(queue: AuditQueue<PendingAuditRecord>, stopped: Bool)>((AuditQueue(limit: ReadAudit.queueLimit), false))
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let log: Log
    /// Serialises this audit's write transactions; `sequence` is touched only under it.
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
    private var failing = false
    public let written = Atomic<Int>(0)

    private static let watermarkKey = Array("indexed".utf8)
    private static let formatKey = Array("format".utf8)
    static let format: [UInt8] = [1]

    /// An audit environment of another layout is refused rather than misread.
    private func checkFormat() throws {
        try environment.write { txn in
            switch try txn.get(meta, Self.formatKey) {
            case Self.format?: return
            case nil where try txn.count(records) == 0: try txn.put(meta, Self.formatKey, Self.format)
            default: throw ConfigurationError("the read audit at \(environment.path) has a layout this version does not read; move it away to start a new one")
            }
        }
    }

    public init(path: String, retentionDays: Int, log: Log) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        var configuration = LMDBEnvironment.Configuration()
        configuration.mapSize = 64 << 20
        configuration.maximumDatabases = 8
        environment = try LMDBEnvironment(path: path, configuration: configuration)
        records = try environment.database(named: "records")
        subjects = try environment.database(named: "subjects")
        meta = try environment.database(named: "meta")
        shapes = try environment.database(named: "shapes")
        retentionMillis = Int64(retentionDays) * 86_400_000
        self.log = log
        lastSweep = unixMillis()
        try checkFormat()
        if let last = try environment.read({ txn in try txn.lastKey(records) }) {
            lastKeyTime = Self.integer(last[..<8])
            sequence = Self.integer(last[8...])
        }
        let thread = Thread { [self] in run() }
        thread.name = "kith-audit"
        thread.start()
    }

    /// Queues a record; it is durable within `flushInterval`. Throws when the audit is failing
    /// and its queue is full: the caller must not serve the read.
    public func record(_ record: AuditRecord) throws {
        let pending = PendingAuditRecord(time: record.time, subjects: record.subjects, shape: record.shape.encoded())
        let accepted = queue.withLock { $0.queue.append(pending) }
        guard accepted else { throw AuditUnavailable() }
    }

    /// Records whose subjects include any of `subjects`, newest first, at most `limit`.
    func records(about wanted: [[UInt8]], limit: Int) throws -> [AuditRecord] {
        try flush()
        try index()
        let wanted = Set(wanted)
        return try environment.read { txn in
            var keys = Set<[UInt8]>()
            for subject in wanted {
                let prefix = Array(subject.prefix(Self.subjectPrefix))
                try txn.scan(subjects, prefix: prefix) { key, _ in
                    keys.insert(Array(key.dropFirst(prefix.count)))
                    return .next
                }
            }
            var found: [AuditRecord] = []
            var shapesRead: [[UInt8]: AuditShape] = [:]
            for key in keys.sorted(by: { $1.lexicographicallyPrecedes($0) }) where found.count < limit {
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

    /// Commits whatever is queued now. A batch that fails stays queued, ahead of newer records.
    public func flush() throws {
        try writeLock.withLock { _ in
            let batch = queue.withLock { $0.queue.take() }
            guard !batch.isEmpty else { return }
            do {
                try write(batch)
            } catch {
                queue.withLock { $0.queue.putBack(batch) }
                throw error
            }
        }
    }

    /// Brings the subject index up to the newest committed record.
    public func index() throws {
        try writeLock.withLock { _ in
            lastIndex = unixMillis()
            unindexed = 0
            while try indexBatch(limit: 50_000) == 50_000 {}
        }
    }

    public func stop() {
        queue.withLock { $0.stopped = true }
        wakeup.signal()
        finished.wait()
    }

    private func run() {
        while true {
            _ = wakeup.wait(timeout: .now() + Self.flushInterval)
            let stopping = queue.withLock { $0.stopped }
            do {
                try flush()
                if stopping || indexDue() { try index() }
                try sweepIfDue()
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
        writeLock.withLock { _ in unindexed >= Self.indexBacklog || unixMillis() - lastIndex >= Self.indexIntervalMillis }
    }

    /// Appends the batch to `records` in one durable transaction. Caller holds `writeLock`.
    private func write(_ batch: [PendingAuditRecord]) throws {
        var next = sequence
        var keyTime = lastKeyTime
        do {
            try environment.write { txn in
                for record in batch {
                    next += 1
                    keyTime = max(keyTime, UInt64(clamping: record.time))
                    let shapeKey = try storedShapeKey(record.shape, txn)
                    try txn.put(
                        records, Self.bigEndian(keyTime) + Self.bigEndian(next),
                        StoredAuditRecord.encode(time: record.time, subjects: record.subjects, shapeKey: shapeKey), mode: .append)
                }
            }
        } catch {
            storedShapes.removeAll()
            throw error
        }
        sequence = next
        lastKeyTime = keyTime
        unindexed += batch.count
        written.wrappingAdd(batch.count, ordering: .relaxed)
    }

    /// The key of a stored shape, storing it first if this writer has not seen it. Caller holds
    /// `writeLock`; `write` empties the cache when its transaction fails, so a cached key always
    /// names a committed shape.
    private func storedShapeKey(_ shape: [UInt8], _ txn: LMDBWriteTransaction) throws -> [UInt8] {
        if let key = storedShapes[shape] { return key }
        let key = AuditShape.key(ofEncoded: shape)
        try txn.put(shapes, key, shape)
        if storedShapes.count >= Self.shapeCacheLimit { storedShapes.removeAll(keepingCapacity: true) }
        storedShapes[shape] = key
        return key
    }

    /// Indexes up to `limit` records after the watermark, moving it in the same transaction.
    /// Returns how many it indexed. Caller holds `writeLock`.
    private func indexBatch(limit: Int) throws -> Int {
        try environment.write { txn in
            let watermark = try txn.get(meta, Self.watermarkKey) ?? []
            var done = 0
            var last = watermark
            try txn.scan(records, from: watermark) { key, value in
                if key == watermark { return .next }
                for subject in try Self.distinctPrefixes(StoredAuditRecord.subjects(ofEncoded: value)) {
                    try txn.put(subjects, subject + key, [])
                }
                last = key
                done += 1
                return done < limit ? .next : .stop
            }
            if done > 0 { try txn.put(meta, Self.watermarkKey, last) }
            return done
        }
    }

    /// Sweeps once a minute (the first a minute after start).
    private func sweepIfDue() throws {
        let now = unixMillis()
        guard now - lastSweep >= 60_000 else { return }
        lastSweep = now
        try sweep(now: now)
    }

    /// Deletes records older than the retention (and their index rows), in transactions of
    /// 10,000 so that commits of new records are not held up long. Returns how many it deleted.
    @discardableResult
    func sweep(now: Int64) throws -> Int {
        let cutoff = Self.bigEndian(UInt64(clamping: now - retentionMillis))
        var total = 0
        while true {
            let deleted = try writeLock.withLock { _ in try sweepBatch(before: cutoff, limit: 10_000) }
            total += deleted
            if deleted < 10_000 { return total }
        }
    }

    /// How many records and index rows are stored (for tests and status).
    func counts() throws -> (records: Int, indexRows: Int, shapes: Int) {
        try environment.read { txn in (try txn.count(records), try txn.count(subjects), try txn.count(shapes)) }
    }

    private func sweepBatch(before cutoff: [UInt8], limit: Int) throws -> Int {
        try environment.write { txn in
            var expired: [([UInt8], [UInt8])] = []
            try txn.scan(records) { key, value in
                guard key.lexicographicallyPrecedes(cutoff) else { return .stop }
                expired.append((key, value))
                return expired.count < limit ? .next : .stop
            }
            for (key, value) in expired {
                for subject in try Self.distinctPrefixes(StoredAuditRecord.subjects(ofEncoded: value)) {
                    _ = try txn.delete(subjects, subject + key)
                }
                _ = try txn.delete(records, key)
            }
            return expired.count
        }
    }

    /// The index prefixes of a record's subjects, each once. A record has a handful of
    /// subjects: comparing them pairwise costs less than hashing every byte into a set.
    static func distinctPrefixes(_ subjects: [ArraySlice<UInt8>]) -> [[UInt8]] {
        var prefixes: [[UInt8]] = []
        for subject in subjects {
            let prefix = Array(subject.prefix(subjectPrefix))
            if !prefixes.contains(prefix) { prefixes.append(prefix) }
        }
        return prefixes
    }

    private static func bigEndian(_ value: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) }
    }

    private static func integer(_ bytes: ArraySlice<UInt8>) -> UInt64 {
        bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }
}
