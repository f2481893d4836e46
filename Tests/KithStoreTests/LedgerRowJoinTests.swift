import KithCRDT
import KithJSON
import KithProfile
import Testing

@testable import KithStore

/// The copies of one message that replicas hold join as a semilattice, link records among them,
/// and a retention sweep commutes with the joins: a replica that swept before a copy came ends,
/// once it sweeps again, with the row of one that took the copy first. What keeps replicas
/// byte-identical whatever order copies, sweeps and comparisons come in.
@Suite("Ledger rows of one message: joins and sweeps")
struct LedgerRowJoinTests {
    static let times: [Int64] = [100, 200, 300, 400]
    static let cutoffs: [Int64] = [50, 150, 250, 350, 450]

    /// One copy of message `m` as node `origin` accepted it at `time`.
    static func copy(at time: Int64, links: [Identifier], random: inout SplitMix64) -> LedgerRow {
        let event = EventRecord(
            messageId: "m", type: .track, name: "Viewed", time: time, channel: "web", revenueMicros: nil,
            properties: RawJSON(.object(JSONObject([]))), clientTimestamp: nil)
        let origin = UInt64(1 + random.below(3))
        return LedgerRow(
            entry: LedgerEntry(type: .track, name: "Viewed", time: time, revenueMicros: nil), event: event, links: links,
            consent: random.chance(30) ? [ConsentDecision(category: "analytics", granted: true)] : [], channel: "web",
            acceptances: [Acceptance(copyTime: time, origin: origin, receivedAt: time + Int64(random.below(9)))])
    }

    /// What a sweep leaves of `row`, copies at or before `cutoff` expired (nil: nothing).
    static func sweep(_ row: LedgerRow?, cutoff: Int64) -> LedgerRow? {
        guard let row else { return nil }
        switch row.swept(expiring: { $0 <= cutoff }) {
        case .keep: return row
        case .trim(let kept): return kept
        case .expire(let record): return record
        }
    }

    static func join(_ a: LedgerRow?, _ b: LedgerRow?) -> LedgerRow? {
        guard let a else { return b }
        guard let b else { return a }
        return a.joined(with: b)
    }

    /// A row a replica may hold: some copies joined, swept or not, and the cutoff of its sweep.
    static func state(links: [Identifier], random: inout SplitMix64) -> (row: LedgerRow?, cutoff: Int64) {
        var row: LedgerRow?
        for _ in 0...random.below(3) { row = join(row, copy(at: times[random.below(times.count)], links: links, random: &random)) }
        guard random.chance(40) else { return (row, .min) }
        let cutoff = cutoffs[random.below(cutoffs.count)]
        return (sweep(row, cutoff: cutoff), cutoff)
    }

    /// Joins commute and repeat harmlessly; grouped any way, and taken in before or after a
    /// sweep, they give one row once a replica sweeps at a time no earlier than the sweeps
    /// that made what it took in (a link record drops the acceptances of the copies it takes
    /// in, a full row keeps them until its sweep drops them as expired: the same row then).
    @Test(arguments: 0..<300 as Range<UInt64>)
    func joinsCommuteAndSweepsMakeThemOneRow(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        // Copies of one message assert the same links (those an erasure stripped from some go
        // from all once the erasure reaches them); half the cases link, half do not.
        let links = random.chance(50) ? [Identifier(kind: .anonymousId, value: "a-1")!] : []
        let (a, b, c) = (
            Self.state(links: links, random: &random), Self.state(links: links, random: &random), Self.state(links: links, random: &random)
        )
        #expect(Self.join(a.row, b.row) == Self.join(b.row, a.row), "commutative")
        #expect(Self.join(a.row, a.row) == a.row, "idempotent")
        for cutoff in Self.cutoffs where cutoff >= max(a.cutoff, b.cutoff, c.cutoff) {
            let context = "seed \(seed), cutoff \(cutoff): \(String(describing: a.row)), \(String(describing: b.row)), \(String(describing: c.row))"
            #expect(
                Self.sweep(Self.join(Self.join(a.row, b.row), c.row), cutoff: cutoff)
                    == Self.sweep(Self.join(a.row, Self.join(b.row, c.row)), cutoff: cutoff), "associative once swept: \(context)")
            let swept = Self.sweep(a.row, cutoff: cutoff)
            #expect(Self.sweep(swept, cutoff: cutoff) == swept, "a second sweep at the same time changes nothing")
            // Swept before `b` came, then again, as one that took `b` before its sweep.
            #expect(
                Self.sweep(Self.join(swept, b.row), cutoff: cutoff) == Self.sweep(Self.join(a.row, b.row), cutoff: cutoff),
                "a sweep commutes with a join: \(context)")
            if let record = swept, record.isLinkRecord {
                #expect(record.acceptances.isEmpty && record.event == nil && record.consent.isEmpty && !record.links.isEmpty)
            }
        }
    }
}
