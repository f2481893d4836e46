import KithCRDT
import KithJSON
import KithProfile
import KithTestSupport
import Testing

/// Reads render profiles from their stored bytes (`EncodedProfileView`) while everything else
/// decodes them (`ProfileView`): the two must show a reader the same bytes.
@Suite("Encoded profile views")
struct EncodedProfileViewTests {
    @Test func rendersWhatTheDecodedViewRendersForWorkloadProfiles() throws {
        for seed in UInt64(1)...4 {
            var state = ProfileState()
            for delta in WorkloadGenerator.deltas(seed: 40 + seed, customers: 25, count: 1_500) {
                state.apply(delta, hasher: PlainHasher())
            }
            #expect(state.views.count > 10)
            #expect(state.views.contains { $0.members.contains { $0.kind.isCustom } }, "the workload's loyalty cards")
            for view in state.views { try expectSameReading(view) }
        }
    }

    @Test func rendersAwkwardValuesAsTheDecodedViewDoes() throws {
        try expectSameReading(Self.awkwardView())
        var empty = Self.awkwardView()
        empty.head = SourceHead()
        try expectSameReading(empty)
    }

    /// Every kind can be a profile's canonical identifier (the rules' priority decides).
    @Test func rendersEveryKindOfCanonicalIdentifier() throws {
        for kind in IdentifierKind.examples {
            var view = Self.awkwardView()
            view.canonical = view.members.first { $0.kind == kind }!
            try expectSameReading(view)
        }
    }

    /// Reads write JSON straight into room estimated from the stored size; text made mostly of
    /// escapes outgrows it and is written again with more.
    @Test func rendersTextThatOutgrowsItsFirstRoom() throws {
        var view = Self.awkwardView()
        let controls = String(repeating: "\u{1}", count: 3_000)
        view.head.traits.merge(key: controls, LWWRegister(try RawJSON(validating: Array(#"{"k":1}"#.utf8)), stamp: LWWStamp(time: 1, tiebreak: "t")))
        let encoded = try EncodedProfileView(ProfileFormat.encode(view))
        #expect(encoded.jsonBytes.count > 4 * encoded.bytes.count)
        try expectSameReading(view)
    }

    /// How a total's revenue is shown, pinned in text (both views write it through one helper).
    @Test func writesRevenueAsEachDisplayShowsIt() throws {
        let encoded = try EncodedProfileView(ProfileFormat.encode(Self.awkwardView()))
        func aggregates(_ display: JSONWriter.RevenueDisplay) -> String {
            var writer = JSONWriter()
            encoded.writeAggregates(revenue: display, to: &writer)
            return writer.string
        }
        let order = #""Order \"Completed\"\n":{"count":2"#
        #expect(aggregates(.plain).contains(order + #","revenue":-1.000001}"#))
        #expect(aggregates(.replaced(by: "***")).contains(order + #","revenue":"***"}"#))
        #expect(aggregates(.omitted).contains(order + "}") && !aggregates(.omitted).contains("revenue"))
        #expect(aggregates(.plain).contains(#""Home":{"count":1}"#), "a total without revenue shows none")
    }

    @Test func refusesEveryTruncationAndAnUnknownVersion() throws {
        let bytes = ProfileFormat.encode(Self.awkwardView())
        for length in 0..<bytes.count {
            #expect(throws: BinaryDecodingError.self) { try EncodedProfileView(Array(bytes[..<length])) }
        }
        #expect(throws: BinaryDecodingError.self) { try EncodedProfileView(bytes + [0]) }
        var versioned = bytes
        versioned[0] = ProfileFormat.version &+ 1
        #expect(throws: BinaryDecodingError.self) { try EncodedProfileView(versioned) }
    }

    /// Damaged bytes never stop the process: they are refused, or rendered. Bytes in the one
    /// canonical form (what Kith writes: `encode(decode(bytes)) == bytes`) are accepted by both
    /// readers and rendered alike. The full decoder also takes some non-canonical bytes (an
    /// upper-case email it lower-cases, unsorted set elements it sorts) that the encoded view
    /// refuses or shows as they lie.
    @Test func damagedBytesAreRefusedOrRenderedAsDecoded() throws {
        let good = ProfileFormat.encode(Self.awkwardView())
        var random = SplitMix64(seed: 91)
        var refused = 0, canonical = 0
        for _ in 0..<5_000 {
            var bytes = good
            for _ in 0..<(1 + random.below(3)) { bytes[1 + random.below(bytes.count - 1)] = UInt8(truncatingIfNeeded: random.next()) }
            let decoded = try? ProfileFormat.decode(ProfileView.self, from: bytes)
            let isCanonical = decoded.map { ProfileFormat.encode($0) == bytes } ?? false
            guard let encoded = try? EncodedProfileView(bytes) else {
                refused += 1
                #expect(!isCanonical)
                continue
            }
            let json = encoded.jsonBytes
            if let decoded, isCanonical {
                canonical += 1
                #expect(json == decoded.jsonBytes)
                expectSameParts(encoded, decoded)
            }
        }
        #expect(refused > 100 && canonical > 100)
    }

    @Test func writesExpandedYearsOutsideRFC3339() {
        #expect(ISO8601.format(millis: 253_402_300_799_999) == "9999-12-31T23:59:59.999Z")
        #expect(ISO8601.format(millis: 253_402_300_800_000) == "+010000-01-01T00:00:00.000Z")
        #expect(ISO8601.format(millis: -62_167_219_200_000) == "0000-01-01T00:00:00.000Z")
        #expect(ISO8601.format(millis: -62_167_219_200_001) == "-000001-12-31T23:59:59.999Z")
        #expect(ISO8601.format(millis: -1) == "1969-12-31T23:59:59.999Z")
    }

    private func expectSameReading(_ view: ProfileView) throws {
        let encoded = try EncodedProfileView(ProfileFormat.encode(view))
        #expect(encoded.jsonBytes == view.jsonBytes, "\(String(decoding: encoded.jsonBytes, as: UTF8.self))")
        #expect(try encoded.decoded() == view)
        expectSameParts(encoded, view)
    }

    /// The parts a read under the policy takes one at a time are the decoded view's, and what it
    /// writes whole is what the decoded view's writers write.
    private func expectSameParts(_ encoded: EncodedProfileView, _ view: ProfileView) {
        let head = view.head
        #expect(encoded.canonical == view.canonical && encoded.members == view.members)
        var traits: [(String, [UInt8])] = []
        encoded.forEachTrait { name, value in traits.append((String(decoding: name, as: UTF8.self), Array(value))) }
        #expect(traits.elementsEqual(head.traits.pairs) { $0.0 == $1.0 && $0.1 == $1.1.value.bytes })
        #expect(encoded.consentRegisters.elementsEqual(head.consent.pairs) { $0.name == $1.0 && $0.register == $1.1 })
        #expect(encoded.hasGroups == !head.groups.live.isEmpty && encoded.groupNames == head.groups.elements)
        #expect(encoded.aggregatesHaveRevenue == head.aggregates.pairs.contains { $0.1.revenueMicros != 0 })
        let summary = encoded.recentEventsSummary
        #expect(summary.isEmpty == head.recent.isEmpty && summary.haveRevenue == head.recent.contains { $0.revenueMicros != nil })
        #expect(encoded.recentEvents == head.recent)
        func written(_ write: (inout JSONWriter) -> Void) -> [UInt8] {
            var writer = JSONWriter()
            write(&writer)
            return writer.bytes
        }
        #expect(written { encoded.writeConsent(to: &$0) } == written { $0.writeConsent(head) })
        for display in [JSONWriter.RevenueDisplay.plain, .replaced(by: "***"), .omitted] {
            #expect(written { encoded.writeAggregates(revenue: display, to: &$0) } == written { $0.writeAggregates(head, revenue: display) })
        }
        #expect(written { encoded.writeEvents(to: &$0) } == written { w in w.writeArray(head.recent) { $0.writeEvent($1) } })
    }

    /// Every part filled, with strings that need escaping, non-ASCII text, a reserved consent
    /// category (never shown), groups, revenue, and times outside RFC 3339's years.
    static func awkwardView() -> ProfileView {
        let stamp = { (time: Int64) in LWWStamp(time: time, tiebreak: "m-\(time)") }
        var head = SourceHead()
        for (key, value) in [("name", #""Zoë \"Q\" O'Brien""#), ("note\u{2028}", #""line\nbreak\t\\ and \u0001""#), ("µ", "[1,2.5,null,true]")] {
            head.traits.merge(key: key, LWWRegister(try! RawJSON(validating: Array(value.utf8)), stamp: stamp(5)))
        }
        head.consent.merge(key: "Analytics", ConsentRegister(granted: true, stamp: stamp(-1), source: "pos \"till\" 4"))
        head.consent.merge(key: "Ads\u{2029}", ConsentRegister(granted: false, stamp: stamp(253_402_300_800_000), source: "web"))
        head.consent.merge(key: ConsentDecision.processingCategory, ConsentRegister(granted: false, stamp: stamp(9), source: "kith"))
        head.groups.add("team \"α\"", tag: stamp(3))
        head.groups.add("b\\c", tag: stamp(4))
        head.groups.add("b\\c", tag: stamp(6))
        head.groups.add("gone", tag: stamp(7))
        head.groups.remove("gone")
        head.recent = [
            EventRecord(
                messageId: "m\"2", type: .track, name: "Order \"Completed\"\n", time: -62_167_219_200_001, channel: "kiosk\u{0007}",
                revenueMicros: 12_500_000, properties: try! RawJSON(validating: Array(#"{"revenue":12.5,"x":"\u2028"}"#.utf8))),
            EventRecord(messageId: "m-1", type: .page, name: "Home", time: 1_760_000_000_123, channel: "web", properties: .emptyObject),
        ]
        head.aggregates = SortedDictionary(
            ascending: ["Home", "Order \"Completed\"\n"],
            [
                EventAggregate(count: 1, revenueMicros: 0), EventAggregate(count: 2, revenueMicros: -1_000_001),
            ])!
        head.messageCount = 7
        head.firstSeen = -62_167_219_200_001
        head.lastSeen = 253_402_300_800_000
        let members = [
            Identifier(kind: .userId, value: "u-\"1\"")!, Identifier(kind: .email, value: "zoë@example.com")!,
            Identifier(kind: .phone, value: "+44 7700 900123")!, Identifier(kind: .deviceId, value: "d\\/1")!,
            Identifier(kind: .anonymousId, value: "a-\u{2028}")!,
            Identifier(kind: .anonymousId, value: "a-1")!, Identifier(kind: .groupId, value: "g/\"1\"")!,
            Identifier(kind: IdentifierKind(custom: "card")!, value: "12:\"34\"")!, Identifier(kind: IdentifierKind(custom: "card1")!, value: "9")!,
            Identifier(kind: IdentifierKind(custom: "loyalty_card")!, value: "0042")!,
            Identifier(kind: IdentifierKind(custom: "card")!, value: "0001")!,
        ].sorted()
        return ProfileView(canonical: members[0], members: members, head: head)
    }
}
