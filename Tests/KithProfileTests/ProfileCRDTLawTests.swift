import KithCRDT
import KithJSON
import KithProfile
import KithTestSupport
import Testing

private func randomStamp(_ r: inout SplitMix64) -> LWWStamp {
    LWWStamp(time: Int64(r.below(5)), tiebreak: "m\(r.below(3))")
}

private func randomLinkState(_ r: inout SplitMix64) -> LinkState {
    var adds: [LWWStamp: String] = [:]
    for _ in 0..<r.below(4) { adds[randomStamp(&r)] = ["web", "pos"][r.below(2)] }
    return LinkState(adds: adds, removedAt: r.chance(50) ? randomStamp(&r) : nil)
}

private func randomConsent(_ r: inout SplitMix64) -> ConsentRegister {
    ConsentRegister(granted: r.chance(50), stamp: randomStamp(&r), source: ["web", "pos"][r.below(2)])
}

/// A document from random messages whose ids collide across documents, sometimes with
/// different content, so the ledger's conflict rule is exercised too.
private func randomDocument(_ r: inout SplitMix64) -> SourceDocument {
    var document = SourceDocument()
    let parser = SegmentMessageParser()
    for _ in 0..<r.below(6) {
        let text =
            #"{"type":"track","userId":"u","event":"E\#(r.below(2))","messageId":"m\#(r.below(6))","timestamp":"2025-01-01T00:00:0\#(r.below(4))Z","properties":{"revenue":\#(r.below(3))},"context":{"consent":{"categoryPreferences":{"Ads":\#(r.chance(50))}},"traits":{}}}"#
        let delta = try! parser.parse(try! JSONParser.parse(text), receivedAt: 0)
        document.apply(delta, historyLimit: 3)
    }
    return document
}

extension SourceDocument: CRDT {
    public mutating func merge(_ other: SourceDocument) { merge(other, historyLimit: 3) }
}

@Suite("Profile CRDT laws (seeded, 1,000 cases each)")
struct ProfileCRDTLawTests {
    @Test func linkStateIsASemilattice() {
        expectJoinLaws(LinkState.self, seed: 61, generate: randomLinkState)
        expectRoundTrips(LinkState.self, seed: 62, generate: randomLinkState)
    }

    @Test func consentRegisterIsASemilattice() {
        expectJoinLaws(ConsentRegister.self, seed: 63, generate: randomConsent)
        expectRoundTrips(ConsentRegister.self, seed: 64, generate: randomConsent)
    }

    @Test func sourceDocumentIsASemilattice() {
        expectJoinLaws(SourceDocument.self, seed: 65, generate: randomDocument)
    }

    @Test func aLinkIsActiveUnlessItsNewestAddPredatesTheRemoval() {
        let add = LWWStamp(time: 5, tiebreak: "m")
        #expect(LinkState(adds: [add: "web"]).isActive)
        #expect(LinkState(adds: [add: "web"], removedAt: add).isActive, "add wins a tie")
        #expect(!LinkState(adds: [add: "web"], removedAt: LWWStamp(time: 6, tiebreak: "r")).isActive)
        #expect(!LinkState(removedAt: add).isActive)
    }
}
