import Foundation
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
        return AuditRecord(time: time, principal: principal, purpose: "analytics", node: "n1", resource: "profile", subjects: subjects, outcome: outcome)
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

    @Test("the sweep deletes records older than the retention and their index rows, and nothing newer")
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
        try audit.record(Self.record(time: now - day + 60_000, principal: "kept", subjects: [Self.subject(1)]))
        try audit.flush()
        try audit.index()
        // Reads that differ only in time and subject share one stored shape.
        #expect(try audit.counts() == (25_001, 25_001, 2))
        #expect(try audit.sweep(now: now) == 25_000)
        #expect(try audit.counts() == (1, 1, 2))
        #expect(try audit.records(about: [Self.subject(1)], limit: 10).map(\.principal) == ["kept"])
    }
}
