import KithCRDT
import KithJSON
import KithProfile
import Testing

@testable import KithStore

/// The erasure cascade's decisions about ledger rows, links and logged changes, on their own
/// (no store).
@Suite("Erasure cutoffs")
struct ErasureCutoffsTests {
    let erased = Identifier(kind: .userId, value: "u-erased")!
    let other = Identifier(kind: .userId, value: "u-other")!
    let cutoff: Int64 = 1_760_000_100_000

    func message(_ text: String, at time: Int64) throws -> ChangeEntry {
        let delta = try SegmentMessageParser().parse(try JSONParser.parse(Array(text.utf8)), receivedAt: time)
        return ChangeEntry(sequence: 1, origin: 1, originSequence: 1, change: .message(delta))
    }

    @Test func messagesAboutTheErasedGoUpToTheCutoffAndStayAfterIt() throws {
        let cutoffs = ErasureCutoffs(times: [erased: cutoff])
        let before = try message(#"{"type":"track","userId":"u-erased","event":"E","messageId":"m1"}"#, at: cutoff)
        let after = try message(#"{"type":"track","userId":"u-erased","event":"E","messageId":"m2"}"#, at: cutoff + 1)
        #expect(cutoffs.purged(before) == nil)
        #expect(cutoffs.purged(after) == after)
        #expect(cutoffs.dominates(erased, at: cutoff) && !cutoffs.dominates(erased, at: cutoff + 1) && !cutoffs.dominates(other, at: 0))
    }

    @Test func someoneElsesMessageLosesItsLinkToTheErased() throws {
        let cutoffs = ErasureCutoffs(times: [Identifier(kind: .anonymousId, value: "a-erased")!: cutoff])
        let linking = try message(#"{"type":"identify","userId":"u-other","anonymousId":"a-erased","messageId":"m3"}"#, at: cutoff - 5)
        guard case .message(let kept)? = cutoffs.purged(linking)?.change else {
            Issue.record("the message about someone else was dropped")
            return
        }
        guard case .message(let original) = linking.change else { return }
        #expect(!original.links.isEmpty && kept.links.isEmpty && kept.subject == other)
    }

    @Test func unlinksTouchingTheErasedGoAndErasuresStay() {
        let cutoffs = ErasureCutoffs(times: [erased: cutoff])
        let edge = LinkEdge(erased, other)!
        let unlink = ChangeEntry(sequence: 2, origin: 1, originSequence: 2, change: .unlink(edge, LWWStamp(time: cutoff, tiebreak: "x")))
        let later = ChangeEntry(sequence: 3, origin: 1, originSequence: 3, change: .unlink(edge, LWWStamp(time: cutoff + 1, tiebreak: "y")))
        let erasure = ChangeEntry(sequence: 4, origin: 1, originSequence: 4, change: .erasure(forgetKeys: [[1, 2, 3]], time: cutoff))
        #expect(cutoffs.purged(unlink) == nil && cutoffs.purged(later) == later && cutoffs.purged(erasure) == erasure)
    }

    func row(at time: Int64, links: [Identifier] = [], copies: [Int64] = []) -> LedgerRow {
        var row = LedgerRow(entry: LedgerEntry(type: .identify, name: "", time: time, revenueMicros: nil), event: nil, links: links)
        row.otherCopyTimes = copies
        return row
    }

    @Test func theErasedMembersRowsGoUpToTheCutoffAndForgetTheCopiesItDominates() {
        let cutoffs = ErasureCutoffs(times: [erased: cutoff])
        #expect(cutoffs.fate(ofOwn: row(at: cutoff), of: erased) == .drop)
        #expect(cutoffs.fate(ofOwn: row(at: cutoff + 1), of: erased) == .keep)
        // A later copy of a message also seen before the cutoff: the earlier copies' times go.
        let copied = row(at: cutoff + 5, copies: [cutoff - 10, cutoff, cutoff + 2])
        #expect(cutoffs.fate(ofOwn: copied, of: erased) == .rewrite(row(at: cutoff + 5, copies: [cutoff + 2])))
        #expect(cutoffs.fate(ofOwn: row(at: 0), of: other) == .keep, "someone not erased keeps every row")
    }

    @Test func aNeighboursRowsLoseTheErasedOnlyWhereTheCutoffDominatesThem() {
        let cutoffs = ErasureCutoffs(times: [erased: cutoff])
        let third = Identifier(kind: .email, value: "c@example.com")!
        #expect(cutoffs.stripped(row(at: cutoff, links: [erased, third]), of: erased) == row(at: cutoff, links: [third]))
        #expect(cutoffs.stripped(row(at: cutoff + 1, links: [erased]), of: erased) == nil, "asserted after the erasure")
        #expect(cutoffs.stripped(row(at: cutoff, links: [third]), of: erased) == nil, "no link to the erased")
    }

    @Test func aLinkKeepsOnlyTheAssertionsAndRemovalAfterTheCutoff() {
        let early = LWWStamp(time: cutoff - 1, tiebreak: "a"), late = LWWStamp(time: cutoff + 3, tiebreak: "b")
        let later = LWWStamp(time: cutoff + 9, tiebreak: "c")
        let rebuilt = EdgeSummary.rebuilt(adds: [early, later, late], removal: LWWStamp(time: cutoff, tiebreak: "r"), cutoff: cutoff)
        #expect(rebuilt.firstAdd == late && rebuilt.lastAdd == later && rebuilt.removedAt == nil && rebuilt.isActive)
        let removed = EdgeSummary.rebuilt(adds: [late], removal: later, cutoff: cutoff)
        #expect(removed.removedAt == later && !removed.isActive)
        #expect(EdgeSummary.rebuilt(adds: [early], removal: nil, cutoff: cutoff) == EdgeSummary(), "nothing survives: the link goes")
    }
}
