import Foundation
import KithCRDT
import KithJSON
import KithProfile
import KithTestSupport
import Testing

private let parser = SegmentMessageParser()
private let received: Int64 = 1_760_000_100_000

private func delta(_ text: String, type: MessageType? = nil) throws -> ProfileDelta {
    try parser.parse(try JSONParser.parse(text), defaultType: type, receivedAt: received)
}

private func id(_ text: String) -> Identifier { Identifier(parsing: text)! }

@Suite("Segment messages")
struct SegmentMessageTests {
    @Test func identifyTakesTraitsFromTraitsAndContextTraits() throws {
        let d = try delta(
            #"{"type":"identify","userId":"u-1","messageId":"m1","traits":{"plan":"plus","email":"A@Example.com "},"context":{"traits":{"plan":"free","city":"Oslo"},"channel":"web"}}"#
        )
        #expect(d.subject == id("user_id:u-1"))
        #expect(d.traits["plan"] == "plus")
        #expect(d.traits["city"] == "Oslo")
        #expect(d.links == [id("email:a@example.com")])
        #expect(d.channel == "web")
    }

    @Test func nullAndBlockedIdsAreAbsent() throws {
        let d = try delta(#"{"type":"track","userId":null,"anonymousId":"a-1","event":"X","messageId":"m"}"#)
        #expect(d.subject == id("anonymous_id:a-1"))
        let blocked = try delta(#"{"type":"track","userId":"undefined","anonymousId":"a-1","event":"X","messageId":"m"}"#)
        #expect(blocked.subject == id("anonymous_id:a-1") && blocked.links.isEmpty)
        #expect(throws: MessageError.self) { try delta(#"{"type":"track","userId":null,"event":"X"}"#) }
    }

    @Test func identifyWithBothIdsLinksThem() throws {
        let d = try delta(#"{"type":"identify","userId":"u-1","anonymousId":"a-1","messageId":"m"}"#)
        #expect(d.subject == id("user_id:u-1"))
        #expect(d.links == [id("anonymous_id:a-1")])
    }

    @Test(
        arguments: [
            ("2025-10-09T08:26:40.123Z", 1_759_998_400_123), ("2025-10-09T08:26:40.123+00:00", 1_759_998_400_123),
            ("2025-10-09T08:26:40.123456Z", 1_759_998_400_123), ("2025-10-09T10:26:40.123456+02:00", 1_759_998_400_123),
            ("2025-10-09T08:26:40Z", 1_759_998_400_000), ("2025-10-09T03:26:40.1-05:00", 1_759_998_400_100),
        ] as [(String, Int64)])
    func parsesClientTimestamps(_ text: String, _ millis: Int64) {
        #expect(ISO8601.parseMillis(text) == millis)
    }

    @Test(arguments: [
        "2025-13-01T00:00:00Z", "2025-02-30T00:00:00Z", "2025-10-09T08:26:40", "2025-10-09", "yesterday", "2025-10-09T08:26:40.Z",
        "2025-10-09T24:00:00Z",
    ])
    func rejectsMalformedTimestamps(_ text: String) {
        #expect(ISO8601.parseMillis(text) == nil)
    }

    @Test func formatsAndParsesBackAnyTime() {
        var random = SplitMix64(seed: 7)
        for _ in 0..<2_000 {
            let millis = Int64(bitPattern: random.next() % 8_000_000_000_000) - 1_000_000_000_000
            #expect(ISO8601.parseMillis(ISO8601.format(millis: millis)) == millis)
        }
    }

    @Test func correctsClientClockSkew() throws {
        // The client's clock is 10 minutes fast: it stamped the event at 12:10 and sent it at 12:11,
        // and Kith received it at 12:01:05, so the event really happened at 12:00:05.
        let d = try parser.parse(
            try JSONParser.parse(
                #"{"type":"track","userId":"u","event":"E","messageId":"m","timestamp":"2025-01-01T12:10:00.000Z","sentAt":"2025-01-01T12:11:00.000Z"}"#
            ),
            receivedAt: ISO8601.parseMillis("2025-01-01T12:01:05.000Z")!)
        #expect(d.times.eventTime == ISO8601.parseMillis("2025-01-01T12:00:05.000Z"))
        #expect(d.times.timestamp == ISO8601.parseMillis("2025-01-01T12:10:00.000Z"))
        #expect(d.times.sentAt == ISO8601.parseMillis("2025-01-01T12:11:00.000Z"))
        #expect(d.times.receivedAt == ISO8601.parseMillis("2025-01-01T12:01:05.000Z"))
        #expect(d.event?.time == d.times.eventTime)
    }

    @Test func readsConsentAndRevenue() throws {
        let d = try delta(
            #"{"type":"track","userId":"u","event":"Order Completed","messageId":"m","properties":{"revenue":"19.99"},"context":{"consent":{"categoryPreferences":{"Advertising":false,"Analytics":true,"Bad":"yes"}}}}"#
        )
        #expect(d.consent == [ConsentDecision(category: "Advertising", granted: false), ConsentDecision(category: "Analytics", granted: true)])
        #expect(d.event?.revenueMicros == 19_990_000)
    }

    @Test func aliasLinksPreviousIdToUserId() throws {
        let d = try delta(#"{"previousId":"a-9","userId":"u-1","messageId":"m"}"#, type: .alias)
        #expect(d.type == .alias && d.subject == id("user_id:u-1") && d.links == [id("anonymous_id:a-9")])
        #expect(throws: MessageError.self) { try delta(#"{"userId":"u-1"}"#, type: .alias) }
    }

    @Test func messagesWithoutIdGetAStableContentId() throws {
        let a = try delta(#"{"type":"track","userId":"u","event":"E","timestamp":"2025-01-01T00:00:00Z"}"#)
        let b = try delta(#"{"type":"track","userId":"u","event":"E","timestamp":"2025-01-01T00:00:00Z"}"#)
        let c = try delta(#"{"type":"track","userId":"u","event":"F","timestamp":"2025-01-01T00:00:00Z"}"#)
        #expect(a.messageId == b.messageId && a.messageId != c.messageId)
    }

    @Test(arguments: [
        #"{"type":"launch","userId":"u"}"#, #"{"type":"track","userId":"u"}"#, #"{"type":"identify","userId":"u","traits":[1]}"#,
        #"{"type":"identify","userId":"u","timestamp":"last week"}"#, #"{"type":"identify","userId":{"a":1}}"#,
        #"{"type":"group","userId":"u"}"#, #"[1,2]"#, #"{"type":"track","userId":"u","event":"E","properties":"x"}"#,
    ])
    func rejectsInvalidMessagesWithAFieldAndReason(_ text: String) {
        #expect(throws: MessageError.self) { try delta(text) }
    }

    @Test func rejectsTypeThatContradictsTheEndpoint() {
        #expect(throws: MessageError.self) { try delta(#"{"type":"track","userId":"u","event":"E"}"#, type: .identify) }
    }
}

@Suite("Identifiers")
struct IdentifierTests {
    /// What the rule says a value becomes, written plainly: emails trimmed and lower-cased, phone
    /// numbers in E.164 (`PhoneNumber`, tested on its own); nil when empty, longer than 255 bytes
    /// or holding a control character.
    static func expected(_ kind: IdentifierKind, _ value: String) -> String? {
        if kind == .phone { return PhoneNumber.normalized(value) }
        let normalized = kind == .email ? value.trimmingCharacters(in: .whitespacesAndNewlines).lowercased() : value
        guard !normalized.isEmpty, normalized.utf8.count <= (kind.isCustom ? 254 - kind.name.utf8.count : 255),
            !normalized.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F })
        else { return nil }
        return normalized
    }

    /// The byte-level shortcut for values already in normal form must agree with the full rule
    /// on every value: seeded random strings over the characters where the two could differ.
    @Test func normalFormShortcutAgreesWithTheRule() {
        let alphabet: [String] = [
            "a", "Z", "@", ".", "0", " ", "\t", "\n", "\u{7F}", "\u{1}", "É", "é", "ß", "\u{85}", "\u{A0}", "\u{2003}", "-", "_", "~", "\r\n",
            "+", "4", "7", "(", "1234",
        ]
        var random = SplitMix64(seed: 77)
        for _ in 0..<5_000 {
            let length = Int(random.next() % 12)
            var value = (0..<length).map { _ in alphabet[Int(random.next() % UInt64(alphabet.count))] }.joined()
            if random.next() % 50 == 0 { value = String(repeating: "x", count: 250 + Int(random.next() % 10)) }
            for kind in IdentifierKind.examples {
                #expect(Identifier(kind: kind, value: value)?.value == Self.expected(kind, value), "\(kind) \(value.debugDescription)")
            }
        }
    }
}

@Suite("Source documents")
struct SourceDocumentTests {
    @Test func aRedeliveredMessageCountsOnce() throws {
        let order = try delta(#"{"type":"track","userId":"u","event":"Order Completed","messageId":"m1","properties":{"revenue":10.5}}"#)
        var document = SourceDocument()
        let first = document.apply(order, historyLimit: 5)
        let second = document.apply(order, historyLimit: 5)
        #expect(first && !second)
        var other = SourceDocument()
        other.apply(order, historyLimit: 5)
        document.merge(other, historyLimit: 5)
        #expect(document.head.aggregates["Order Completed"] == EventAggregate(count: 1, revenueMicros: 10_500_000))
    }

    @Test func aggregatesStayExactBeyondTheBoundedHistory() throws {
        var document = SourceDocument()
        for i in 0..<50 {
            let d = try delta(
                #"{"type":"track","userId":"u","event":"Order Completed","messageId":"m\#(i)","timestamp":"2025-01-01T00:00:\#(String(format2(i)))Z","properties":{"revenue":0.1}}"#
            )
            document.apply(d, historyLimit: 5)
        }
        #expect(document.head.recent.count == 5)
        #expect(document.head.recent.map(\.messageId) == ["m49", "m48", "m47", "m46", "m45"])
        #expect(document.head.aggregates["Order Completed"] == EventAggregate(count: 50, revenueMicros: 5_000_000))
    }

    @Test func concurrentConsentDecisionsResolveToDenied() throws {
        let granted = try delta(
            #"{"type":"identify","userId":"u","messageId":"z","timestamp":"2025-01-01T00:00:00Z","context":{"consent":{"categoryPreferences":{"Ads":true}}}}"#
        )
        let denied = try delta(
            #"{"type":"identify","userId":"u","messageId":"a","timestamp":"2025-01-01T00:00:00Z","context":{"consent":{"categoryPreferences":{"Ads":false}}}}"#
        )
        let later = try delta(
            #"{"type":"identify","userId":"u","messageId":"b","timestamp":"2025-01-01T00:00:01Z","context":{"consent":{"categoryPreferences":{"Ads":true}}}}"#
        )
        for order in [[granted, denied], [denied, granted]] {
            var document = SourceDocument()
            for d in order { document.apply(d, historyLimit: 5) }
            #expect(document.head.consent["Ads"]?.granted == false)
            #expect(document.head.consent["Analytics"] == nil, "never collected is unknown, not denied")
            document.apply(later, historyLimit: 5)
            #expect(document.head.consent["Ads"]?.granted == true)
        }
    }

    @Test func laterTraitWinsByEventTimeNotArrival() throws {
        let newer = try delta(#"{"type":"identify","userId":"u","messageId":"m2","timestamp":"2025-01-02T00:00:00Z","traits":{"city":"Oslo"}}"#)
        let older = try delta(#"{"type":"identify","userId":"u","messageId":"m1","timestamp":"2025-01-01T00:00:00Z","traits":{"city":"Leeds"}}"#)
        var document = SourceDocument()
        document.apply(newer, historyLimit: 5)
        document.apply(older, historyLimit: 5)
        #expect(document.head.traits["city"]?.value.value == "Oslo")
    }
}

private func format2(_ i: Int) -> String { i < 10 ? "0\(i)" : "\(i)" }

@Suite("Identity resolution")
struct IdentityResolutionTests {
    private func state(_ messages: [String]) throws -> ProfileState {
        var state = ProfileState()
        for text in messages { state.apply(try delta(text), hasher: PlainHasher()) }
        return state
    }

    @Test func anyIdentifierReadsTheWholePerson() throws {
        let s = try state([
            #"{"type":"track","anonymousId":"a-1","event":"Product Viewed","messageId":"m1","timestamp":"2025-01-01T00:00:00Z"}"#,
            #"{"type":"alias","previousId":"a-1","userId":"u-1","messageId":"m2","timestamp":"2025-01-01T00:00:01Z"}"#,
            #"{"type":"identify","userId":"u-1","traits":{"email":"x@example.com"},"messageId":"m3","timestamp":"2025-01-01T00:00:02Z"}"#,
        ])
        for text in ["user_id:u-1", "anonymous_id:a-1", "email:x@example.com"] {
            let view = s.view(of: id(text))
            #expect(view?.canonical == id("user_id:u-1"))
            #expect(view?.members == [id("user_id:u-1"), id("email:x@example.com"), id("anonymous_id:a-1")])
            #expect(view?.head.aggregates["Product Viewed"]?.count == 1)
        }
        #expect(s.view(of: id("user_id:nobody")) == nil)
    }

    @Test func aSharedIdentifierDoesNotGlueTwoCustomers() throws {
        // A shared in-store tablet: the same anonymous id is tied to two different users. The
        // earlier link wins; the later one would put two user_ids in one profile and is inactive.
        let s = try state([
            #"{"type":"identify","userId":"u-1","anonymousId":"tablet","messageId":"m1","timestamp":"2025-01-01T00:00:00Z"}"#,
            #"{"type":"identify","userId":"u-2","anonymousId":"tablet","messageId":"m2","timestamp":"2025-01-01T00:00:01Z"}"#,
        ])
        #expect(s.view(of: id("user_id:u-1"))?.members == [id("user_id:u-1"), id("anonymous_id:tablet")])
        #expect(s.view(of: id("user_id:u-2"))?.members == [id("user_id:u-2")])
        #expect(s.views.count == 2)
    }

    @Test func unmergeSplitsTheViewAndKeepsEveryonesData() throws {
        var s = try state([
            #"{"type":"track","anonymousId":"a-1","event":"Store Visit","messageId":"m1","timestamp":"2025-01-01T00:00:00Z"}"#,
            #"{"type":"alias","previousId":"a-1","userId":"u-1","messageId":"m2","timestamp":"2025-01-01T00:00:01Z"}"#,
        ])
        #expect(s.view(of: id("anonymous_id:a-1"))?.canonical == id("user_id:u-1"))
        s.removeLink(
            id("user_id:u-1"), id("anonymous_id:a-1"), stamp: LWWStamp(time: ISO8601.parseMillis("2025-01-02T00:00:00Z")!, tiebreak: "op-1"),
            hasher: PlainHasher())
        #expect(s.view(of: id("anonymous_id:a-1"))?.canonical == id("anonymous_id:a-1"))
        #expect(s.view(of: id("anonymous_id:a-1"))?.head.aggregates["Store Visit"]?.count == 1)
        // An old copy of the alias arriving late does not undo the unmerge; new evidence does re-link.
        var copy = s
        copy.apply(
            try delta(#"{"type":"alias","previousId":"a-1","userId":"u-1","messageId":"m2-copy","timestamp":"2025-01-01T00:00:05Z"}"#),
            hasher: PlainHasher())
        #expect(copy.view(of: id("anonymous_id:a-1"))?.canonical == id("anonymous_id:a-1"))
        copy.apply(
            try delta(#"{"type":"alias","previousId":"a-1","userId":"u-1","messageId":"m9","timestamp":"2025-01-03T00:00:00Z"}"#),
            hasher: PlainHasher())
        #expect(copy.view(of: id("anonymous_id:a-1"))?.canonical == id("user_id:u-1"))
    }

    @Test func componentsDoNotDependOnLinkArrivalOrder() throws {
        var random = SplitMix64(seed: 3)
        let messages = (0..<30).map { i in
            #"{"type":"identify","userId":"u-\#(i % 4)","anonymousId":"a-\#(i % 7)","messageId":"m\#(i)","timestamp":"2025-01-01T00:00:\#(format2(i))Z"}"#
        }
        let expected = try state(messages).views.map(\.members)
        for _ in 0..<200 {
            #expect(try state(messages.shuffled(using: &random)).views.map(\.members) == expected)
        }
        #expect(expected.allSatisfy { $0.filter { $0.kind == .userId }.count <= 1 })
    }

    @Test func erasureRemovesThePersonAndRefusesOlderDataButAcceptsNewer() throws {
        var s = try state([
            #"{"type":"identify","userId":"u-1","anonymousId":"a-1","traits":{"email":"x@example.com"},"messageId":"m1","timestamp":"2025-01-01T00:00:00Z"}"#,
            #"{"type":"track","anonymousId":"a-1","event":"E","messageId":"m2","timestamp":"2025-01-01T00:00:01Z"}"#,
        ])
        let erasedAt = ISO8601.parseMillis("2025-01-02T00:00:00Z")!
        let members = s.erase(id("email:x@example.com"), at: erasedAt, hasher: PlainHasher())
        #expect(members.count == 3)
        #expect(s.documents.isEmpty && s.graph.isEmpty && s.views.isEmpty)
        #expect(s.forgotten.keys.sorted() == members.map { PlainHasher().forgetKey(for: $0) }.sorted())
        let retry = try delta(#"{"type":"track","anonymousId":"a-1","event":"E","messageId":"m3","timestamp":"2025-01-01T12:00:00Z"}"#)
        let retried = s.apply(retry, hasher: PlainHasher())
        #expect(retried == .forgotten)
        let fresh = try delta(#"{"type":"track","userId":"u-1","event":"E","messageId":"m4","timestamp":"2025-01-03T00:00:00Z"}"#)
        let freshOutcome = s.apply(fresh, hasher: PlainHasher())
        #expect(freshOutcome == .applied)
        #expect(s.view(of: id("user_id:u-1"))?.head.messageCount == 1)
    }
}

@Suite("Profile encodings")
struct ProfileEncodingTests {
    @Test func deltasHeadsAndViewsRoundTrip() throws {
        let deltas = WorkloadGenerator.deltas(seed: 4, customers: 10, count: 1_000)
        var state = ProfileState()
        for d in deltas {
            #expect(try ProfileFormat.decode(ProfileDelta.self, from: ProfileFormat.encode(d)) == d)
            state.apply(d, hasher: PlainHasher())
        }
        for view in state.views {
            let bytes = ProfileFormat.encode(view)
            #expect(try ProfileFormat.decode(ProfileView.self, from: bytes) == view)
            let json = try JSONParser.parse(view.jsonBytes)
            #expect(json["id"] == .string(view.canonical.description))
        }
        for (edge, link) in state.graph.pairs {
            #expect(try LinkEdge(decoding: edge.encoded()) == edge)
            #expect(try LinkState(decoding: link.encoded()) == link)
        }
    }

    @Test func refusesAnUnknownFormatVersionAndGarbage() {
        let d = WorkloadGenerator.deltas(seed: 5, customers: 2, count: 1)[0]
        var bytes = ProfileFormat.encode(d)
        bytes[0] = 99
        #expect(throws: BinaryDecodingError.self) { try ProfileFormat.decode(ProfileDelta.self, from: bytes) }
        var random = SplitMix64(seed: 6)
        let good = ProfileFormat.encode(d)
        for _ in 0..<5_000 {
            var mutated = good
            mutated[random.below(mutated.count)] = UInt8(truncatingIfNeeded: random.next())
            _ = try? ProfileFormat.decode(ProfileDelta.self, from: Array(mutated.prefix(random.below(mutated.count + 1))))
        }
    }

    @Test func viewJSONShowsWhatAReaderNeeds() throws {
        var state = ProfileState()
        for text in [
            #"{"type":"identify","userId":"u-1","traits":{"name":"Ana"},"messageId":"m1","timestamp":"2025-01-01T00:00:00Z","context":{"channel":"web","consent":{"categoryPreferences":{"Analytics":true}}}}"#,
            #"{"type":"track","userId":"u-1","event":"Order Completed","properties":{"revenue":12.5},"messageId":"m2","timestamp":"2025-01-01T00:00:01Z"}"#,
        ] { state.apply(try delta(text), hasher: PlainHasher()) }
        let json = try JSONParser.parse(state.view(of: id("user_id:u-1"))!.jsonBytes)
        #expect(json["traits"]?["name"] == "Ana")
        #expect(json["consent"]?["Analytics"]?["status"] == "granted")
        #expect(json["aggregates"]?["events"]?["Order Completed"]?["revenue"] == .number(JSONNumber(literal: "12.5")!))
        #expect(json["aggregates"]?["messages"] == 2)
        #expect(
            json["events"]
                == .array([
                    try #require(
                        JSONParser.parse(
                            #"{"messageId":"m2","type":"track","event":"Order Completed","timestamp":"2025-01-01T00:00:01.000Z","channel":"unknown","properties":{"revenue":12.5}}"#
                        ) as JSONValue?)
                ]))
    }
}
