import Foundation
import KithCRDT
import KithJSON
import KithPolicy
import KithProfile
import KithTestSupport
import Testing

@testable import KithStore

/// Documents sent to a site through its purposes' projection: what a purpose may not see never
/// reaches the site's rows, and the site converges on the projection of the core's state.
@Suite("Projected documents")
struct ProjectedDocumentsTests {
    static let parser = SegmentMessageParser()
    static let u1 = Identifier(kind: .userId, value: "u-1")!
    static let canary = "CANARY-7f3a"

    static func take(_ json: String, at time: Int64, into store: MemoryProfileStore) throws {
        try store.apply([try parser.parse(try JSONParser.parse(Array(json.utf8)), receivedAt: time)])
    }

    /// Sends the site every document the core holds, projected.
    static func send(from core: MemoryProfileStore, to site: MemoryProfileStore, _ projection: SiteProjection) throws {
        let keys =
            try rawEntries(core).filter { $0.table == .forget }.map(\.key)
            + (try core.profiles(after: nil, limit: 1_000).flatMap(\.members).map { core.engine.hasher.forgetKeyBytes(for: $0) })
        let states = try core.documentStates(for: Array(Set(keys)))
        try site.join(try states.compactMap { try $0.projected(by: projection.documentProjection) })
    }

    /// Every byte of the site's rows, keys and values, as text: where a canary must not be.
    static func siteText(_ site: MemoryProfileStore) throws -> String {
        String(decoding: try rawEntries(site).flatMap { $0.key + $0.value }, as: UTF8.self)
    }

    @Test func whatNoPurposeMaySeeNeverReachesTheSite() throws {
        let core = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: secret))
        let site = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: secret))
        try Self.take(
            #"""
            {"type":"identify","userId":"u-1","traits":{"email":"ann@example.com","phone":"+44 20 7946 0123","birthday":"1986-07-07",\#
            "plan":"plus","secretNote":"\#(Self.canary)"},"context":{"consent":{"categoryPreferences":{"analytics":true}}},\#
            "messageId":"m1","timestamp":"2026-01-01T00:00:00Z"}
            """#, at: 1_767_225_700_000, into: core)
        try Self.take(
            #"{"type":"track","userId":"u-1","event":"Order Completed","properties":{"revenue":12.5},"messageId":"m2","timestamp":"2026-01-01T00:00:01Z"}"#,
            at: 1_767_225_700_000, into: core)
        let view = try #require(try core.view(of: Self.u1))
        let projection = try SiteProjection(policy: .builtIn, purposes: ["analytics"], consent: ConsentState(decisions: ["analytics": true]))
        try Self.send(from: core, to: site, projection)

        let held = try #require(try site.view(of: Self.u1))
        #expect(held.members == [Self.u1], "the email and phone documents stay at the core")
        #expect(try site.view(of: Identifier(kind: .email, value: "ann@example.com")!) == nil)
        #expect(held.head.traits == projection.project(view.head).traits)
        #expect(held.head.traits["birthday"] != nil && held.head.traits["secretNote"] == nil)
        #expect(held.head.recent.map(\.name) == ["Order Completed"] && held.head.recent[0].revenueMicros == 12_500_000, "analytics sees revenue")
        #expect(held.head.consent == view.head.consent)
        let coreText = try Self.siteText(core)
        let coreHolds = coreText.contains(Self.canary) && coreText.contains("ann@example.com")
        #expect(coreHolds, "the core holds them")
        let text = try Self.siteText(site)
        // Checked into plain booleans: a failure names the secret, never prints the site's rows.
        for secret in [Self.canary, "ann@example.com", "7946 0123", "+442079460123"] {
            let leaked = text.contains(secret)
            #expect(!leaked, "\(secret) reached the site")
        }
        let masked = text.contains("a***@example.com")
        #expect(masked, "the masked email is held")

        // An advertising site: no finances, demographics masked.
        let advertising = try SiteProjection(policy: .builtIn, purposes: ["advertising"], consent: ConsentState(decisions: ["advertising": true]))
        let other = MemoryProfileStore(configuration: StoreConfiguration(node: 7, forgetKeySecret: secret))
        try Self.send(from: core, to: other, advertising)
        let shown = try #require(try other.view(of: Self.u1))
        #expect(shown.head.recent.first?.revenueMicros == nil && shown.head.traits["birthday"].map { "\($0.value)" } == #""1986""#)
    }

    /// A purge of a component that left a site's scope leaves the site exactly as if it had
    /// never been sent that component: the same rows, byte for byte, as a site sent only the
    /// rest with links to the purged customers left out; the component that stays after an
    /// unmerge is untouched, and no purged identifier is named anywhere.
    @Test func aPurgeLeavesTheSiteAsIfTheComponentHadNeverBeenSent() throws {
        let core = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: secret))
        for (index, json) in [
            #"{"type":"identify","anonymousId":"a-1","traits":{"homeStore":"leeds-1"},"context":{"consent":{"categoryPreferences":{"analytics":true}}}}"#,
            #"{"type":"identify","userId":"u-1","anonymousId":"a-1","traits":{"plan":"plus","email":"ann@example.com"}}"#,
            #"{"type":"track","userId":"u-1","event":"Visit","properties":{"page":"/shoes"}}"#,
            #"{"type":"track","anonymousId":"a-1","event":"Visit","properties":{"page":"/bags"}}"#,
            #"{"type":"identify","userId":"u-2","traits":{"plan":"free"}}"#,
        ].enumerated() {
            let message = String(json.dropLast()) + #","messageId":"p\#(index)","timestamp":"2026-01-01T00:00:0\#(index)Z"}"#
            try Self.take(message, at: 1_767_225_700_000, into: core)
        }
        // The customer signs out of the shared device: u-1 leaves the component that holds the trait.
        try core.removeLink(Self.u1, Identifier(kind: .anonymousId, value: "a-1")!, stamp: LWWStamp(time: 1_767_225_800_000, tiebreak: "unmerge"))
        let projection = try SiteProjection(policy: .builtIn, purposes: ["analytics"], consent: ConsentState(decisions: ["analytics": true]))
        let a1 = Identifier(kind: .anonymousId, value: "a-1")!
        // Either side of the unmerge leaves: the user (its rows name the device in their links),
        // or the device (the user's rows name it, and must stop naming it).
        for (leaver, stayer) in [(Self.u1, a1), (a1, Self.u1)] {
            let leaving = try #require(try core.view(of: leaver)).members
            let purged = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: secret))
            try Self.send(from: core, to: purged, projection)
            #expect(try purged.view(of: leaver) != nil)
            try purged.purge(leaving)

            let neverSent = MemoryProfileStore(configuration: StoreConfiguration(node: 7, forgetKeySecret: secret))
            var withoutThem = projection.documentProjection
            let holdsKind = withoutThem.holds
            withoutThem.holds = { holdsKind($0) && !leaving.contains($0) }
            let keys = try core.profiles(after: nil, limit: 100).flatMap(\.members).map { core.engine.hasher.forgetKeyBytes(for: $0) }
            try neverSent.join(try core.documentStates(for: keys).compactMap { try $0.projected(by: withoutThem) })

            let rows = { (store: MemoryProfileStore) in try rawEntries(store).filter { $0.table == .documents }.map { $0.key + [0xFF] + $0.value } }
            #expect(try rows(purged) == rows(neverSent), "\(leaver) left")
            #expect(try purged.view(of: leaver) == nil && purged.view(of: stayer) != nil)
            #expect(try purged.view(of: Identifier(kind: .userId, value: "u-2")!) != nil)
            let named = try Self.siteText(purged).contains(leaver.value)
            #expect(!named, "the purged \(leaver.kind) is named in the site's rows")
        }
    }

    /// The site merges what it receives with the ordinary join: sending again after more data,
    /// or sending an older state again, leaves it at the projection of the core's newest state.
    @Test func theSiteConvergesOnTheProjectionOfTheCore() throws {
        let core = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: secret))
        let site = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: secret))
        let projection = try SiteProjection(policy: .builtIn, purposes: ["analytics"], consent: ConsentState(decisions: ["analytics": true]))
        var random = SplitMix64(seed: 3)
        var sent: [[DocumentState]] = []
        for round in 0..<4 {
            for index in 0..<30 {
                let user = "u-\(random.below(5))"
                let json =
                    random.chance(50)
                    ? #"{"type":"identify","userId":"\#(user)","traits":{"email":"\#(user)-\#(random.below(9))@example.com","plan":"p\#(random.below(3))"},"messageId":"r\#(round)-\#(index)","timestamp":"2026-01-01T00:00:0\#(random.below(9))Z"}"#
                    : #"{"type":"track","userId":"\#(user)","event":"Visit","properties":{"revenue":1.5},"messageId":"r\#(round)-\#(index)","timestamp":"2026-01-01T00:00:0\#(random.below(9))Z"}"#
                try Self.take(json, at: 1_767_225_700_000 + Int64(round), into: core)
            }
            let keys = try core.profiles(after: nil, limit: 1_000).flatMap(\.members).map { core.engine.hasher.forgetKeyBytes(for: $0) }
            sent.append(try core.documentStates(for: keys).compactMap { try $0.projected(by: projection.documentProjection) })
            try site.join(sent.last!)
        }
        try site.join(sent[0])  // an old state again: nothing goes back
        for index in 0..<5 {
            let user = Identifier(kind: .userId, value: "u-\(index)")!
            guard let view = try core.view(of: user) else { continue }
            let held = try #require(try site.view(of: user))
            #expect(held.head.traits == projection.project(view.head).traits, "u-\(index)")
            #expect(held.head.messageCount == view.head.messageCount && held.head.recent == projection.project(view.head).recent)
        }
    }
}
