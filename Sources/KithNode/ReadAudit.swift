import Foundation
import KithCRDT
import KithLMDB
import KithPolicy
import Synchronization

/// One profile read, as the audit keeps it: who, for what, which profile (by keyed hash only),
/// and which fields were returned, masked and withheld — names, never values.
public struct AuditRecord: Equatable, Sendable {
    public var time: Int64
    public var principal: String
    public var purpose: String
    public var node: String
    /// The resource read: `profile`, `traits`, `identifiers`, `events`, `consent`, `export`.
    public var resource: String
    /// Keyed hashes of the profile's member identifiers at the time of the read.
    public var subjects: [[UInt8]]
    public var returned: [String]
    public var masked: [String]
    public var withheld: [Withheld]

    func encode(to writer: inout BinaryWriter) {
        writer.write(byte: 1)
        writer.write(signed: time)
        for text in [principal, purpose, node, resource] { writer.write(string: text) }
        writer.write(sequence: subjects) { w, subject in w.write(bytes: subject) }
        writer.write(sequence: returned) { w, field in w.write(string: field) }
        writer.write(sequence: masked) { w, field in w.write(string: field) }
        writer.write(sequence: withheld) { w, item in
            w.write(string: item.field)
            w.write(string: item.reason.rawValue)
        }
    }

    public init(time: Int64, principal: String, purpose: String, node: String, resource: String, subjects: [[UInt8]], outcome: ReadOutcome) {
        self.time = time
        self.principal = principal
        self.purpose = purpose
        self.node = node
        self.resource = resource
        self.subjects = subjects
        returned = outcome.returned
        masked = outcome.masked
        withheld = outcome.withheld
    }

    init(from reader: inout BinaryReader) throws {
        guard try reader.readByte() == 1 else { throw BinaryDecodingError(.unsupportedVersion, offset: 0, "audit record") }
        time = try reader.readSigned()
        principal = try reader.readString()
        purpose = try reader.readString()
        node = try reader.readString()
        resource = try reader.readString()
        subjects = try reader.readSequence { r in Array(try r.readBytes()) }
        returned = try reader.readSequence { r in try r.readString() }
        masked = try reader.readSequence { r in try r.readString() }
        withheld = try reader.readSequence { r in
            let field = try r.readString()
            let offset = r.offset
            guard let reason = WithholdReason(rawValue: try r.readString()) else {
                throw BinaryDecodingError(.invalidValue, offset: offset, "withhold reason")
            }
            return Withheld(field: field, reason: reason)
        }
        try reader.expectEnd()
    }
}

/// The read audit of one node, in an LMDB environment of its own (so that audit writes never
/// wait for, or hold up, the profile writer).
///
/// Reads hand their records to `record`, which only appends to a buffer; a writer thread commits
/// the buffer every `flushInterval` (or sooner when it fills) in one durable transaction. So the
/// audit costs a read one buffer append, and a crash can lose at most the records of the last
/// interval (docs/privacy.md says so). Records are indexed by each subject hash and by time;
/// records older than the retention are swept once a minute.
public final class ReadAudit: @unchecked Sendable {
    static let flushInterval: DispatchTimeInterval = .milliseconds(10)
    static let bufferLimit = 8_192

    private let environment: LMDBEnvironment
    private let bySubject: LMDBDatabase
    private let byTime: LMDBDatabase
    private let retentionMillis: Int64
    private let buffer = Mutex<(records: [AuditRecord], stopped: Bool)>(([], false))
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let log: Log
    /// Orders records of the same millisecond; continues after the newest stored record.
    private var sequence: UInt64 = 0
    private var lastSweep: Int64 = 0
    public let written = Atomic<Int>(0)

    public init(path: String, retentionDays: Int, log: Log) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        var configuration = LMDBEnvironment.Configuration()
        configuration.mapSize = 64 << 20
        configuration.maximumDatabases = 4
        environment = try LMDBEnvironment(path: path, configuration: configuration)
        bySubject = try environment.database(named: "bySubject")
        byTime = try environment.database(named: "byTime")
        retentionMillis = Int64(retentionDays) * 86_400_000
        self.log = log
        if let last = try environment.read({ txn in try txn.lastKey(byTime) }), last.count == 16 {
            sequence = last[8...].reduce(0) { $0 << 8 | UInt64($1) }
        }
        let thread = Thread { [self] in run() }
        thread.name = "kith-audit"
        thread.start()
    }

    /// Queues a record; it is durable within `flushInterval`.
    public func record(_ record: AuditRecord) {
        let full = buffer.withLock { state -> Bool in
            state.records.append(record)
            return state.records.count >= Self.bufferLimit
        }
        if full { wakeup.signal() }
    }

    /// Records whose subjects include any of `subjects`, newest first, at most `limit`.
    func records(about subjects: [[UInt8]], limit: Int) throws -> [AuditRecord] {
        try flush()
        return try environment.read { txn in
            var all: [(key: [UInt8], record: AuditRecord)] = []
            for subject in Set(subjects) {
                try txn.scan(bySubject, prefix: subject) { key, value in
                    var reader = BinaryReader(value)
                    all.append((Array(key.dropFirst(subject.count)), try AuditRecord(from: &reader)))
                    return .next
                }
            }
            // A record indexed under several of the subjects is one read: keep it once.
            var seen = Set<[UInt8]>()
            return all.sorted { $1.key.lexicographicallyPrecedes($0.key) }
                .filter { seen.insert($0.key).inserted }.prefix(limit).map(\.record)
        }
    }

    /// Commits whatever is buffered now.
    public func flush() throws {
        let records = buffer.withLock { state -> [AuditRecord] in
            defer { state.records.removeAll(keepingCapacity: true) }
            return state.records
        }
        try write(records)
    }

    public func stop() {
        buffer.withLock { $0.stopped = true }
        wakeup.signal()
        finished.wait()
    }

    private func run() {
        while true {
            _ = wakeup.wait(timeout: .now() + Self.flushInterval)
            do {
                try flush()
                try sweepIfDue()
            } catch {
                log(.error, "audit write failed", [("error", .string("\(error)"))])
            }
            if buffer.withLock({ $0.stopped }) {
                try? flush()
                finished.signal()
                return
            }
        }
    }

    /// Only the writer thread (or a caller holding no other audit state) writes; LMDB
    /// serialises write transactions, and `sequence` is touched only inside one.
    private let writeLock = Mutex<Void>(())

    private func write(_ records: [AuditRecord]) throws {
        guard !records.isEmpty else { return }
        try writeLock.withLock { _ in
            try environment.write { txn in
                for record in records {
                    sequence += 1
                    let key = Self.bigEndian(UInt64(bitPattern: record.time)) + Self.bigEndian(sequence)
                    var writer = BinaryWriter(capacity: 256)
                    record.encode(to: &writer)
                    for subject in Set(record.subjects) { try txn.put(bySubject, subject + key, writer.bytes) }
                    var subjects = BinaryWriter()
                    subjects.write(sequence: record.subjects) { w, subject in w.write(bytes: subject) }
                    try txn.put(byTime, key, subjects.bytes)
                }
            }
        }
        written.wrappingAdd(records.count, ordering: .relaxed)
    }

    /// Deletes records older than the retention, at most once a minute.
    private func sweepIfDue() throws {
        let now = unixMillis()
        guard now - lastSweep >= 60_000 else { return }
        lastSweep = now
        let cutoff = Self.bigEndian(UInt64(bitPattern: now - retentionMillis))
        try writeLock.withLock { _ in
            try environment.write { txn in
                var expired: [([UInt8], [UInt8])] = []
                try txn.scan(byTime) { key, value in
                    guard key.lexicographicallyPrecedes(cutoff) else { return .stop }
                    expired.append((key, value))
                    return expired.count < 100_000 ? .next : .stop
                }
                for (key, value) in expired {
                    var reader = BinaryReader(value)
                    for subject in try reader.readSequence({ r in Array(try r.readBytes()) }) { try txn.delete(bySubject, subject + key) }
                    try txn.delete(byTime, key)
                }
            }
        }
    }

    private static func bigEndian(_ value: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) }
    }
}
