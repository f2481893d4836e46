import Foundation
import KithAPI
import KithLMDB
import KithPolicy
import Testing

@testable import KithNode

@Suite("Read audit")
struct ReadAuditTests {
    static func record(time: Int64, principal: String = "bi", subjects: [[UInt8]]) -> AuditRecord {
        var outcome = ReadOutcome()
        outcome.returned = ["traits.plan"]
        outcome.masked = ["traits.email"]
        outcome.withheld = [Withheld(field: "traits.phone", reason: .consentDenied, category: "contact", consentCategory: "marketing")]
        return AuditRecord(
            time: time, principal: principal, purpose: "analytics", node: "n1", resource: "profile", subjects: subjects, outcome: outcome)
    }

    static func subject(_ byte: UInt8) -> [UInt8] { [UInt8](repeating: byte, count: 32) }

    static func directory() -> String {
        NSTemporaryDirectory() + "kith-audit-\(UUID().uuidString)"
    }

    @Test("the queue refuses when full and keeps a failed batch ahead of newer records")
    func queue() {
        var queue = AuditQueue<AuditRecord>(limit: 3)
        let accepted1 = queue.append(Self.record(time: 1, subjects: []))
        #expect(accepted1)
        let accepted2 = queue.append(Self.record(time: 2, subjects: []))
        #expect(accepted2)
        let batch = queue.take()
        #expect(batch.map(\.time) == [1, 2])
        #expect(queue.pending.isEmpty)
        let accepted3 = queue.append(Self.record(time: 3, subjects: []))
        #expect(accepted3)
        queue.putBack(batch)
        #expect(queue.pending.map(\.time) == [1, 2, 3])
        let accepted4 = queue.append(Self.record(time: 4, subjects: []))
        #expect(!accepted4)
        let retaken = queue.take()
        #expect(retaken.map(\.time) == [1, 2, 3])
        let accepted5 = queue.append(Self.record(time: 5, subjects: []))
        #expect(accepted5)
    }

    @Test("records are found by any subject, once, newest first, within the limit, and after a restart")
    func lookup() throws {
        let path = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (a, b, c) = (Self.subject(1), Self.subject(2), Self.subject(3))
        let now = unixMillis()
        var audit: ReadAudit? = try ReadAudit(path: path, retentionDays: 30, log: Log())
        try audit!.record(Self.record(time: now + 1_000, principal: "first", subjects: [a, b]))
        try audit!.record(Self.record(time: now + 1_000, principal: "second", subjects: [b]))
        try audit!.record(Self.record(time: now + 900, principal: "older", subjects: [a]))
        try audit!.record(Self.record(time: now + 2_000, principal: "other", subjects: [c]))
        // Both subjects of one profile: the read indexed under both is one record. Newest
        // recorded first: a read whose clock said earlier but was recorded later is newer.
        let found = try audit!.records(about: [a, b], limit: 10)
        #expect(found.map(\.principal) == ["older", "second", "first"])
        #expect(found.map(\.time) == [now + 900, now + 1_000, now + 1_000])
        #expect(try audit!.records(about: [a, b], limit: 2).map(\.principal) == ["older", "second"])
        #expect(try audit!.records(about: [c], limit: 10) == [Self.record(time: now + 2_000, principal: "other", subjects: [c])])
        #expect(try audit!.records(about: [Self.subject(9)], limit: 10).isEmpty)

        // Records after the index's watermark are indexed by the next query, not twice.
        try audit!.record(Self.record(time: now + 3_000, principal: "later", subjects: [a]))
        #expect(try audit!.records(about: [a], limit: 10).map(\.principal) == ["later", "older", "first"])
        #expect(try audit!.counts() == (5, 6, 5))

        audit!.stop()
        audit = nil
        let reopened = try ReadAudit(path: path, retentionDays: 30, log: Log())
        defer { reopened.stop() }
        // The sequence continues after restart: a record of the same millisecond sorts newer.
        try reopened.record(Self.record(time: now + 3_000, principal: "after restart", subjects: [a]))
        #expect(try reopened.records(about: [a], limit: 2).map(\.principal) == ["after restart", "later"])
    }

    @Test("a subject that shares the index's hash prefix is not mistaken for another")
    func prefixCollision() throws {
        let path = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let audit = try ReadAudit(path: path, retentionDays: 30, log: Log())
        defer { audit.stop() }
        let first = Self.subject(7)
        var second = first
        second[31] = 8
        try audit.record(Self.record(time: 1, principal: "first", subjects: [first]))
        try audit.record(Self.record(time: 2, principal: "second", subjects: [second]))
        #expect(try audit.records(about: [first], limit: 10).map(\.principal) == ["first"])
        #expect(try audit.records(about: [second], limit: 10).map(\.principal) == ["second"])
    }

    @Test("the sweep deletes records older than the retention and the runs that index only them, and nothing newer")
    func retention() throws {
        let path = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let audit = try ReadAudit(path: path, retentionDays: 1, log: Log())
        defer { audit.stop() }
        let now = unixMillis()
        let day: Int64 = 86_400_000
        for index in 0..<25_000 {
            try audit.record(Self.record(time: now - 2 * day + Int64(index), subjects: [Self.subject(UInt8(index % 200))]))
        }
        try audit.flush()
        try audit.index()
        try audit.record(Self.record(time: now - day + 60_000, principal: "kept", subjects: [Self.subject(1)]))
        try audit.flush()
        try audit.index()
        // Reads that differ only in time and subject share one stored shape.
        #expect(try audit.counts() == (25_001, 25_001, 2))
        #expect(try audit.sweep(now: now) == 25_000)
        // The swept run's rows go a chunk at a time, between commits of records.
        while try audit.mergeStep() {}
        #expect(try audit.counts() == (1, 1, 2))
        #expect(try audit.records(about: [Self.subject(1)], limit: 10).map(\.principal) == ["kept"])
    }

    /// Subjects of the records of `merges`: record `i` of pass `p` is about subjects
    /// `(p + i) % 5` and `(p * i) % 7 + 10`.
    /// Every subject of `recordPasses` finds exactly the records about it, newest first.
    static func expectEverySubjectFindsItsRecords(_ audit: ReadAudit, _ written: [(principal: String, subjects: [[UInt8]])], limit: Int) throws {
        for byte in UInt8(0)..<20 {
            let expected = written.filter { $0.subjects.contains(subject(byte)) }.map(\.principal).reversed()
            #expect(try audit.records(about: [subject(byte)], limit: limit).map(\.principal) == Array(expected))
        }
    }

    static func recordPasses(_ audit: ReadAudit, passes: Range<Int>, time: (Int) -> Int64, merge: Bool) throws -> [(
        principal: String, subjects: [[UInt8]]
    )] {
        var written: [(String, [[UInt8]])] = []
        for pass in passes {
            for index in 0..<3 {
                let subjects = [Self.subject(UInt8((pass + index) % 5)), Self.subject(UInt8((pass * index) % 7 + 10))]
                let principal = "p\(pass)-\(index)"
                try audit.record(Self.record(time: time(pass), principal: principal, subjects: subjects))
                written.append((principal, subjects))
            }
            try audit.flush()
            try audit.index()
            while merge, try audit.mergeStep() {}
        }
        return written
    }

    @Test("runs merged in chunks keep every record findable, and no level holds fanIn runs")
    func merges() throws {
        let path = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let audit = try ReadAudit(path: path, retentionDays: 30, log: Log(), runsInBackground: false)
        defer { audit.stop() }
        audit.mergeChunkRows = 5
        let now = unixMillis()
        let written = try Self.recordPasses(audit, passes: 0..<40, time: { now + Int64($0) }, merge: true)
        let runs = try audit.runs()
        #expect(runs.contains { $0.level >= 2 })
        for level in 0..<AuditIndexLayout.levels { #expect(runs.filter { $0.level == level }.count < AuditIndexLayout.fanIn) }
        #expect(try audit.counts().indexRows == 240)
        #expect(runs.reduce(0) { $0 + $1.rows } == 240)
        try Self.expectEverySubjectFindsItsRecords(audit, written, limit: 1_000)
    }

    @Test("a merge cut short by a crash leaves no rows behind after reopening, and merges again")
    func interruptedMerge() throws {
        let path = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var audit: ReadAudit? = try ReadAudit(path: path, retentionDays: 30, log: Log(), runsInBackground: false)
        audit!.mergeChunkRows = 4
        let now = unixMillis()
        let written = try Self.recordPasses(audit!, passes: 0..<4, time: { now + Int64($0) }, merge: false)
        #expect(try audit!.runs().count == 4)
        #expect(try audit!.mergeStep())
        // Four rows of the new run are written but not registered: no query sees them twice.
        #expect(try audit!.counts().indexRows == 28)
        #expect(try audit!.records(about: [Self.subject(1)], limit: 100).count == written.filter { $0.subjects.contains(Self.subject(1)) }.count)
        audit = nil  // no stop: as if the process died

        let reopened = try ReadAudit(path: path, retentionDays: 30, log: Log(), runsInBackground: false)
        defer { reopened.stop() }
        #expect(try reopened.counts().indexRows == 24)
        while try reopened.mergeStep() {}
        #expect(try reopened.runs().map(\.level) == [1])
        #expect(try reopened.counts().indexRows == 24)
        try Self.expectEverySubjectFindsItsRecords(reopened, written, limit: 100)
    }

    @Test("rows of swept records in a run that also indexes newer ones are skipped, and a merge leaves them out")
    func expiredRowsInRuns() throws {
        let path = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let audit = try ReadAudit(path: path, retentionDays: 1, log: Log(), runsInBackground: false)
        defer { audit.stop() }
        let now = unixMillis()
        let day: Int64 = 86_400_000
        // Pass p records reads at now + 10p + i about subject i; record keys follow those times.
        func pass(_ pass: Int) throws {
            for index in 0..<3 {
                try audit.record(
                    Self.record(time: now + Int64(10 * pass + index), principal: "p\(pass)-\(index)", subjects: [Self.subject(UInt8(index))]))
            }
            try audit.flush()
            try audit.index()
        }
        for number in 0..<4 { try pass(number) }
        #expect(try audit.counts().indexRows == 12)
        // As if a day later: the reads before now + 11 are past the retention. Pass 0's run goes
        // whole; pass 1's keeps the row of its first read, whose record is gone.
        let later = now + day + 11
        #expect(try audit.sweep(now: later) == 4)
        while try audit.mergeStep(now: later) {}
        #expect(try audit.counts().records == 8)
        #expect(try audit.counts().indexRows == 9)
        #expect(try audit.records(about: [Self.subject(0)], limit: 10).map(\.principal) == ["p3-0", "p2-0"])
        #expect(try audit.records(about: [Self.subject(1)], limit: 10).map(\.principal) == ["p3-1", "p2-1", "p1-1"])
        try pass(4)
        while try audit.mergeStep(now: later) {}
        #expect(try audit.runs().map(\.level) == [1])
        #expect(try audit.counts().indexRows == 11)
        #expect(try audit.records(about: [Self.subject(0)], limit: 10).map(\.principal) == ["p4-0", "p3-0", "p2-0"])
    }

    @Test("an audit of layout 1 drops its old index and indexes its records again")
    func layoutOneIsReindexed() throws {
        let path = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var audit: ReadAudit? = try ReadAudit(path: path, retentionDays: 30, log: Log(), runsInBackground: false)
        let now = unixMillis()
        try audit!.record(Self.record(time: now, principal: "first", subjects: [Self.subject(1)]))
        try audit!.record(Self.record(time: now + 1, principal: "second", subjects: [Self.subject(1), Self.subject(2)]))
        try audit!.flush()
        audit = nil
        // Make it layout 1: the old table, a watermark past every record, no runs.
        let environment = try LMDBEnvironment(
            path: path,
            configuration: {
                var c = LMDBEnvironment.Configuration(); c.maximumDatabases = 24; return c
            }())
        let meta = try environment.database(named: "meta")
        let records = try environment.database(named: "records")
        let old = try environment.database(named: "subjects")
        try environment.write { txn in
            try txn.put(meta, Array("format".utf8), [1])
            try txn.put(meta, Array("indexed".utf8), try txn.lastKey(records)!)
            try txn.put(old, [UInt8](repeating: 1, count: 32), [])
        }
        let reopened = try ReadAudit(path: path, retentionDays: 30, log: Log(), runsInBackground: false)
        defer { reopened.stop() }
        #expect(try reopened.records(about: [Self.subject(1)], limit: 10).map(\.principal) == ["second", "first"])
        #expect(try reopened.records(about: [Self.subject(2)], limit: 10).map(\.principal) == ["second"])
    }
}
