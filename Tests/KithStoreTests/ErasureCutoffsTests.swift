import KithCRDT
import KithJSON
import KithProfile
import Testing

@testable import KithStore

/// The erasure cascade's decisions about logged changes, on their own (no store).
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
}
