import KithCRDT
import KithJSON
import KithPolicy
import KithProfile
import KithTestSupport
import Testing

/// What a site may hold of a customer: each field as the most any of its purposes may see it,
/// nothing when every purpose withholds the customer, and projections that join as the data does.
@Suite("Site projection")
struct SiteProjectionTests {
    static let granted = ConsentState(decisions: ["analytics": true, "advertising": true, "personalization": true])

    static func site(_ purposes: [String], _ consent: ConsentState = granted) throws -> SiteProjection {
        try SiteProjection(policy: .builtIn, purposes: purposes, consent: consent)
    }

    static func head(_ json: String) throws -> SourceHead {
        var head = SourceHead()
        head.absorb(try SegmentMessageParser().parse(try JSONParser.parse(Array(json.utf8)), receivedAt: 1_760_000_000_000), historyLimit: 10)
        return head
    }

    static func trait(_ head: SourceHead, _ name: String) -> String? { head.traits[name].map { String(describing: $0.value) } }

    @Test func eachFieldAsTheMostAnyPurposeMaySeeIt() throws {
        let head = try Self.head(
            #"{"type":"identify","userId":"u-1","traits":{"email":"ann@example.com","phone":"+44 20 7946 0000","birthday":"1986-07-07","city":"Oslo"},"messageId":"m1"}"#
        )
        // Analytics masks contact data and shows demographics.
        let analytics = try Self.site(["analytics"])
        let seen = analytics.project(head)
        #expect(Self.trait(seen, "email") == #""a***@example.com""#)
        #expect(Self.trait(seen, "phone")?.hasSuffix(#"00""#) == true && Self.trait(seen, "phone")?.contains("7946") == false)
        #expect(Self.trait(seen, "birthday") == #""1986-07-07""#)
        #expect(Self.trait(seen, "city") == nil, "an unknown field is sensitive, which analytics does not see")
        #expect(seen.traits["email"]?.stamp == head.traits["email"]?.stamp, "a masked register keeps its stamp")
        // A site that also serves support sees them plainly.
        let both = try Self.site(["analytics", "support"])
        #expect(both.project(head).traits == head.traits)
        // Identifier kinds: held only where shown; a masked kind stays at the core.
        #expect(analytics.holds(.userId) && !analytics.holds(.email) && !analytics.holds(.phone))
        #expect(both.holds(.email))
    }

    @Test func eventsAndRevenueOnlyWhereAPurposeShowsThem() throws {
        let head = try Self.head(
            #"{"type":"track","userId":"u-1","event":"Order Completed","properties":{"revenue":12.5},"messageId":"m2"}"#)
        #expect(head.recent.first?.revenueMicros == 12_500_000)
        // Advertising shows behaviour but not finances: the event stays, its revenue goes.
        let advertising = try Self.site(["advertising"])
        #expect(advertising.project(head).recent.map(\.name) == ["Order Completed"])
        #expect(advertising.project(head).recent.first?.revenueMicros == nil)
        let entry = LedgerEntry(type: .track, name: "Order Completed", time: 5, revenueMicros: 12_500_000)
        #expect(advertising.project(entry) == LedgerEntry(type: .track, name: "Order Completed", time: 5, revenueMicros: nil))
        #expect(try Self.site(["analytics"]).project(entry) == entry)
    }

    /// A withdrawn or never-given consent that every purpose of the site needs takes the
    /// customer off the site; consent registers themselves always travel.
    @Test func consentDecidesWhetherTheSiteHoldsTheCustomer() throws {
        #expect(try Self.site(["analytics"]).holdsAnything)
        #expect(try !Self.site(["analytics"], ConsentState(decisions: ["analytics": false])).holdsAnything, "withdrawn")
        #expect(try Self.site(["analytics"], ConsentState()).holdsAnything, "analytics is opt-out")
        #expect(try !Self.site(["personalization"], ConsentState()).holdsAnything, "personalization is opt-in")
        #expect(try Self.site(["personalization", "analytics"], ConsentState(decisions: ["analytics": true])).holdsAnything)
        #expect(try !Self.site(["support"], ConsentState(restricted: true)).holdsAnything, "restricted")
        let head = try Self.head(
            #"{"type":"identify","userId":"u-1","context":{"consent":{"categoryPreferences":{"analytics":true}}},"messageId":"m3"}"#)
        #expect(try Self.site(["advertising"]).project(head).consent == head.consent)
        #expect(throws: ReadRefusal.self) { try Self.site(["no-such-purpose"]) }
    }

    /// The join of projections is the projection of the join, for heads built from any two
    /// overlapping sets of messages (a site merges what the core sends with the ordinary join).
    @Test(arguments: 0..<20 as Range<UInt64>)
    func projectionsJoinAsTheDataDoes(seed: UInt64) throws {
        var random = SplitMix64(seed: seed ^ 0x51DE)
        // Values whose masks differ (first letters, last digits, years), so that a projection
        // that lost the stamps' order would pick other values than the join.
        let parser = SegmentMessageParser()
        let deltas = try (0..<120).map { index in
            let time = ISO8601.format(millis: 1_760_000_000_000 + Int64(random.below(86_400_000)))
            let json: String
            if random.chance(60) {
                let letter = String(UnicodeScalar(UInt8(97 + random.below(26))))
                let traits =
                    #""email":"\#(letter)\#(random.below(9))@example.com","phone":"+44 20 7946 00\#(random.below(90) + 10)","#
                    + #""birthday":"19\#(random.below(90) + 10)-01-01","plan":"p\#(random.below(5))","city":"c\#(random.below(5))""#
                json = #"{"type":"identify","userId":"u-1","messageId":"m\#(index)","timestamp":"\#(time)","traits":{\#(traits)}}"#
            } else {
                json =
                    #"{"type":"track","userId":"u-1","event":"Order Completed","messageId":"m\#(index)","timestamp":"\#(time)","#
                    + #""properties":{"revenue":\#(random.below(100)).5}}"#
            }
            return try parser.parse(try JSONParser.parse(Array(json.utf8)), receivedAt: 1_760_000_000_000 + 90_000_000)
        }
        var a = SourceHead(), b = SourceHead()
        for delta in deltas {
            let roll = random.below(3)
            if roll != 1 { a.absorb(delta, historyLimit: 10) }
            if roll != 0 { b.absorb(delta, historyLimit: 10) }
        }
        var joined = a
        joined.mergeFields(b, historyLimit: 10)
        for purposes in [["analytics"], ["advertising"], ["personalization", "advertising"], ["support"]] {
            let site = try Self.site(purposes)
            var joinedProjections = site.project(a)
            joinedProjections.mergeFields(site.project(b), historyLimit: 10)
            let projectedJoin = site.project(joined)
            #expect(joinedProjections.traits == projectedJoin.traits, "seed \(seed) \(purposes)")
            #expect(joinedProjections.consent == projectedJoin.consent && joinedProjections.groups == projectedJoin.groups)
            #expect(joinedProjections.recent == projectedJoin.recent, "seed \(seed) \(purposes)")
        }
        #expect(!joined.traits.pairs.map(\.0).isEmpty && !joined.recent.isEmpty, "the messages set traits and events")
    }
}
