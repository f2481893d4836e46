import KithCRDT
import KithJSON
import KithTestSupport
import Testing

@testable import KithProfile

@Suite("Phone numbers")
struct PhoneNumberTests {
    let britain = PhoneNumber.Region(code: "GB")!

    @Test func writingsOfOneNumberMeet() {
        for text in ["+44 20 7946 0000", "+44 (0)20 7946 0000".replacingOccurrences(of: "(0)", with: ""), "0044 20 7946 0000", "+44-20-7946-0000"] {
            #expect(PhoneNumber.normalized(text) == "+442079460000", "\(text)")
        }
        #expect(PhoneNumber.normalized("020 7946 0000", region: britain) == "+442079460000")
        #expect(PhoneNumber.normalized("20 7946 0000", region: britain) == "+442079460000")
        #expect(PhoneNumber.normalized("(212) 555-0100", region: PhoneNumber.Region(code: "us")) == "+12125550100")
        #expect(PhoneNumber.normalized("1 212 555 0100", region: PhoneNumber.Region(code: "US")) == "+12125550100")
        #expect(PhoneNumber.normalized("06 1234 5678", region: PhoneNumber.Region(code: "IT")) == "+390612345678", "Italy keeps its 0")
    }

    @Test func whatIsNotANumberIsNotGuessedIntoOne() {
        for text in ["020 7946 0000", "", "+", "+0 20 7946 0000", "+44 20 7946 0000 ext. 12", "call me", "+44 20", "+44 2079 4600 0012 3456", "4+4"] {
            #expect(PhoneNumber.normalized(text) == nil, "\(text)")
        }
        #expect(PhoneNumber.normalized("12", region: britain) == nil, "too short")
        #expect(PhoneNumber.Region(code: "XX") == nil)
    }

    /// Normalising is idempotent, and what it gives is the identifier's stored form.
    @Test func theNormalFormIsStable() {
        var random = SplitMix64(seed: 22)
        let pieces = ["+", "00", "0", " ", "-", "(", ")", ".", "/", "1", "2", "4", "7", "9", "x"]
        for _ in 0..<5_000 {
            let text = (0..<Int(random.next() % 16)).map { _ in pieces[Int(random.next() % UInt64(pieces.count))] }.joined()
            guard let phone = PhoneNumber.normalized(text, region: random.next() % 2 == 0 ? britain : nil) else { continue }
            #expect(PhoneNumber.normalized(phone) == phone, "\(text) → \(phone)")
            #expect(Identifier(kind: .phone, value: text.hasPrefix("+") || text.hasPrefix("00") ? text : phone)?.value == phone, "\(text)")
            #expect(phone.utf8.withContiguousStorageIfAvailable { PhoneNumber.isNormal(utf8: $0) } == true)
        }
    }
}

@Suite("Identifiers a message carries")
struct IdentifierSourcesTests {
    func delta(_ json: String, sources: IdentifierSources = .builtIn) throws -> ProfileDelta {
        try SegmentMessageParser(sources: sources).parse(try JSONParser.parse(Array(json.utf8)), receivedAt: 1_780_000_000_000)
    }

    @Test func phoneEmailAndDeviceByDefault() throws {
        let identify = try delta(
            #"{"type":"identify","userId":"u-1","traits":{"email":"Ana@Example.com","phone":"+44 20 7946 0000"},"context":{"device":{"id":"dev-9"}}}"#
        )
        #expect(identify.links.map(\.description) == ["email:ana@example.com", "phone:+442079460000", "device_id:dev-9"])
        // A track call's context traits identify too; its properties do not, unless configured.
        let track = try delta(
            #"{"type":"track","event":"E","anonymousId":"a-1","context":{"traits":{"phone":"0044 20 7946 0000"}},"properties":{"email":"x@y.z"}}"#)
        #expect(track.links.map(\.description) == ["phone:+442079460000"])
        // A group call's traits are the group's.
        let group = try delta(#"{"type":"group","userId":"u-1","groupId":"g","traits":{"email":"g@example.com"}}"#)
        #expect(group.links.isEmpty)
    }

    @Test func unusableValuesAreSkippedNotRefused() throws {
        let message = try delta(#"{"type":"identify","userId":"u-1","traits":{"email":"not-an-email","phone":"020 7946 0000"}}"#)
        #expect(message.links.isEmpty, "no @, and a national number without a region")
        #expect(message.traits["phone"]?.stringValue == "020 7946 0000", "the trait itself is kept as sent")
        let blocked = try delta(#"{"type":"identify","userId":"u-1","traits":{"email":"unknown"},"context":{"device":{"id":"null"}}}"#)
        #expect(blocked.links.isEmpty)
    }

    @Test func aMessageKnownOnlyByAnotherIdentifierIsAboutIt() throws {
        let pos = try delta(#"{"type":"track","event":"Order Completed","context":{"traits":{"phone":"+44 20 7946 0000"}}}"#)
        #expect(pos.subject.description == "phone:+442079460000" && pos.links.isEmpty)
        // The kind that would name the profile is the subject; the others are its links.
        let both = try delta(#"{"type":"identify","traits":{"phone":"+442079460000","email":"a@b.c"}}"#)
        #expect(both.subject.description == "email:a@b.c" && both.links.map(\.description) == ["phone:+442079460000"])
        #expect(throws: MessageError.self) { try delta(#"{"type":"track","event":"E","traits":{"phone":"+442079460000"}}"#) }
    }

    @Test func configuredPathsExternalIdsAndARegion() throws {
        let sources = IdentifierSources.builtIn.adding(
            [
                IdentifierSources.Source(path: "properties.deviceId", kind: .deviceId)!,
                IdentifierSources.Source(path: "traits.mobile", kind: .phone)!,
            ],
            externalIdTypes: ["ga_client_id": .anonymousId], phoneRegion: PhoneNumber.Region(code: "GB"))
        let message = try delta(
            #"""
            {"type":"track","event":"E","userId":"u-1","properties":{"deviceId":"kiosk-7"},
             "context":{"traits":{"phone":"020 7946 0000"},"externalIds":[{"id":"GA1.2.3","type":"ga_client_id","collection":"users","encoding":"none"},
               {"id":"e@x.io","type":"email","collection":"users","encoding":"none"},{"id":"z","type":"unmapped","collection":"users","encoding":"none"}]}}
            """#, sources: sources)
        #expect(message.links.map(\.description) == ["email:e@x.io", "phone:+442079460000", "device_id:kiosk-7", "anonymous_id:GA1.2.3"])
        #expect(IdentifierSources.Source(path: "userId", kind: .userId) == nil && IdentifierSources.Source(path: "traits.", kind: .email) == nil)
    }

    /// Whatever order the messages come in, the same identifiers end in the same profiles.
    @Test func theSameMessagesMakeTheSameProfilesInAnyOrder() throws {
        let messages = [
            #"{"type":"track","event":"Visit","messageId":"pos-1","context":{"traits":{"phone":"+44 20 7946 0000"}}}"#,
            #"{"type":"track","event":"Call","messageId":"cc-1","context":{"traits":{"phone":"020 7946 0000"}},"userId":"u-7"}"#,
            #"{"type":"identify","messageId":"web-1","userId":"u-7","traits":{"email":"ana@example.com","phone":"+442079460000"}}"#,
        ]
        let sources = IdentifierSources.builtIn.adding([], externalIdTypes: [:], phoneRegion: PhoneNumber.Region(code: "GB"))
        let deltas = try messages.map { try delta($0, sources: sources) }
        var random = SplitMix64(seed: 7)
        var views: Set<[String]> = []
        for _ in 0..<20 {
            var state = ProfileState()
            for delta in deltas.shuffled(using: &random) { state.apply(delta, hasher: PlainHasher()) }
            views.insert(state.views.map { $0.members.map(\.description).joined(separator: ",") }.sorted())
        }
        #expect(views == [["user_id:u-7,email:ana@example.com,phone:+442079460000"]], "\(views)")
    }
}

/// A limit within a window of time: a profile gathers identifiers of a kind over time, never more
/// than the limit first linked within any one window.
@Suite("Identity limits within a window")
struct IdentityWindowTests {
    static let day: Int64 = 86_400_000
    let user = Identifier(kind: .userId, value: "u-1")!

    func devices(_ days: [Int64]) -> (nodes: [Identifier], links: [(edge: LinkEdge, order: LWWStamp)]) {
        let anonymous = days.indices.map { Identifier(kind: .anonymousId, value: "a-\($0)")! }
        let links = zip(anonymous, days).map { device, day in
            (edge: LinkEdge(user, device)!, order: LWWStamp(time: 1_780_000_000_000 + day * Self.day, tiebreak: device.value))
        }
        return ([user] + anonymous, links)
    }

    @Test func aProfileGathersDevicesOverTimeButNotTooManyAtOnce() throws {
        let rules = try IdentityRules(limits: [.userId: 1, .anonymousId: 2], windows: [.anonymousId: 7 * Self.day])
        // Days 0, 1, 3, 10, 11, 30: within any 7 days at most two may join.
        let (nodes, links) = devices([0, 1, 3, 10, 11, 30])
        let people = IdentityResolver(rules: rules).people(nodes: nodes, links: links)
        let profile = try #require(people.first { $0.contains(user) })
        #expect(profile.map(\.value) == ["u-1", "a-0", "a-1", "a-3", "a-4", "a-5"], "a-2 (day 3) is the third within a week")
        #expect(people.count == 2)
        // Without the window, the limit is two in all; with the same links in any order, the same people.
        let plain = try IdentityRules(limits: [.userId: 1, .anonymousId: 2])
        #expect(IdentityResolver(rules: plain).people(nodes: nodes, links: links).first { $0.contains(user) }?.count == 3)
        var random = SplitMix64(seed: 5)
        for _ in 0..<20 {
            #expect(IdentityResolver(rules: rules).people(nodes: nodes.shuffled(using: &random), links: links.shuffled(using: &random)) == people)
        }
    }

    @Test func theRefusalNamesTheWindow() throws {
        let rules = try IdentityRules(limits: [.userId: 1, .anonymousId: 1], windows: [.anonymousId: 2 * Self.day])
        let a = Identifier(kind: .anonymousId, value: "a")!, b = Identifier(kind: .anonymousId, value: "b")!
        let early = IdentifierTally([user, a], rules: rules) { $0 == a ? 0 : .max }
        #expect(
            rules.refusal(joining: early, with: IdentifierTally([b], rules: rules) { _ in Self.day }) == .limitWithin(.anonymousId, 1, 2 * Self.day))
        #expect(rules.refusal(joining: early, with: IdentifierTally([b], rules: rules) { _ in 3 * Self.day }) == nil)
        #expect(LinkRefusal.limitWithin(.anonymousId, 1, 2 * Self.day).description == "limit: a profile gains at most 1 anonymous_id within 2 days")
        #expect(throws: IdentityRuleError.self) { try IdentityRules(limits: [.userId: 1], windows: [.email: Self.day]) }
    }
}
