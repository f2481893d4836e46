import KithCRDT
import KithJSON
import KithProfile
import KithTestSupport
import Testing

private let parser = SegmentMessageParser()
private let received: Int64 = 1_760_000_100_000

private func delta(_ text: String, receivedAt: Int64 = received) throws -> ProfileDelta {
    try parser.parse(try JSONParser.parse(text), receivedAt: receivedAt)
}

private let yearMillis: Int64 = 365 * 86_400_000

@Suite("Client clocks: the event-time ceiling")
struct EventTimeCeilingTests {
    @Test func anEventDatedAfterItsReceiptIsOrderedAtItsReceipt() throws {
        let ahead = ISO8601.format(millis: received + yearMillis)
        let d = try delta(#"{"type":"track","userId":"u","event":"E","messageId":"m","timestamp":"\#(ahead)"}"#)
        #expect(d.times.eventTime == received)
        #expect(d.event?.time == received)
        #expect(d.stamp.time == received)
        // The client's own times are kept as given.
        #expect(d.times.timestamp == received + yearMillis)
        #expect(d.times.clientTime == received + yearMillis && d.times.isClientTimeAhead)
    }

    @Test func aClampedEventShowsTheClientsTimestampInReads() throws {
        let ahead = received + yearMillis
        var document = SourceDocument()
        document.apply(
            try delta(#"{"type":"track","userId":"u","event":"E","messageId":"m1","timestamp":"\#(ISO8601.format(millis: ahead))"}"#), historyLimit: 5
        )
        document.apply(
            try delta(#"{"type":"track","userId":"u","event":"E","messageId":"m2","timestamp":"\#(ISO8601.format(millis: received - 1))"}"#),
            historyLimit: 5)
        #expect(document.head.recent.map(\.clientTimestamp) == [ahead, nil])
        let user = Identifier(kind: .userId, value: "u")!
        let view = ProfileView(canonical: user, members: [user], head: document.head)
        let events = try JSONParser.parse(view.jsonBytes)["events"]?.arrayValue ?? []
        #expect(events.map { $0["timestamp"] } == [.string(ISO8601.format(millis: received)), .string(ISO8601.format(millis: received - 1))])
        #expect(events.map { $0["clientTimestamp"] } == [.string(ISO8601.format(millis: ahead)), nil])
        // Stored, decoded and rendered from the stored bytes alike.
        let bytes = ProfileFormat.encode(view)
        #expect(try ProfileFormat.decode(ProfileView.self, from: bytes) == view)
        #expect(try EncodedProfileView(bytes).jsonBytes == view.jsonBytes)
    }

    @Test func eventRecordsWrittenBeforeTheClientTimestampDecodeUnchanged() throws {
        // An event record as stored before the flag existed: messageId "m", type track (1), name "E",
        // time 5 (zigzag 10), channel "", no revenue, properties {}.
        let old: [UInt8] = [1, 0x6D, 1, 1, 0x45, 10, 0, 0, 2, 0x7B, 0x7D]
        var reader = BinaryReader(old)
        let record = try EventRecord(from: &reader)
        #expect(record == EventRecord(messageId: "m", type: .track, name: "E", time: 5, channel: "", properties: RawJSON(.object(JSONObject()))))
        var writer = BinaryWriter()
        record.encode(to: &writer)
        #expect(writer.bytes == old)
        // The flag with a time outside the representable range is refused.
        var bad = old
        bad[2] |= 0x80
        bad.insert(contentsOf: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], at: 6)
        var badReader = BinaryReader(bad)
        #expect(throws: BinaryDecodingError.self) { try EventRecord(from: &badReader) }
    }

    @Test func pastAndSkewCorrectedTimesAreKept() throws {
        let past = try delta(#"{"type":"track","userId":"u","event":"E","messageId":"m","timestamp":"\#(ISO8601.format(millis: received - 5_000))"}"#)
        #expect(past.times.eventTime == received - 5_000 && !past.times.isClientTimeAhead)
        // A client clock a year fast that sends sentAt is corrected as Segment does, not clamped.
        let sent = try delta(
            #"{"type":"track","userId":"u","event":"E","messageId":"m","timestamp":"\#(ISO8601.format(millis: received + yearMillis - 3_000))","sentAt":"\#(ISO8601.format(millis: received + yearMillis))"}"#
        )
        #expect(sent.times.eventTime == received - 3_000)
    }

    @Test func noOrderOfMessagesCanDateAProfileAfterItsLastReceipt() throws {
        var random = SplitMix64(seed: 28)
        var state = ProfileState()
        var newestReceipt = Int64.min
        for index in 0..<500 {
            let receivedAt = received + Int64(index) * 1_000
            let client = receivedAt + Int64(random.below(2 * Int(yearMillis / 1_000))) * 1_000 - yearMillis
            let sentAt = random.chance(30) ? #","sentAt":"\#(ISO8601.format(millis: client + Int64(random.below(5_000))))""# : ""
            let d = try delta(
                #"{"type":"identify","userId":"u-\#(random.below(5))","messageId":"m\#(index)","timestamp":"\#(ISO8601.format(millis: client))"\#(sentAt),"traits":{"n":\#(index)}}"#,
                receivedAt: receivedAt)
            #expect(d.times.eventTime <= receivedAt)
            newestReceipt = max(newestReceipt, receivedAt)
            state.apply(d, hasher: PlainHasher())
        }
        for view in state.views { #expect((view.head.lastSeen ?? .min) <= newestReceipt) }
    }
}

/// `maxEventAge`: a message dated longer before its receipt than the age is refused, naming
/// the field; one dated within it, or with no age set, is taken.
@Suite("Client clocks: the oldest date taken")
struct MaximumAgeTests {
    @Test func aMessageOlderThanTheMaximumAgeIsRefused() throws {
        let day: Int64 = 86_400_000
        let aged = SegmentMessageParser(maximumAge: 30 * day)
        func message(daysBefore days: Int64) throws -> JSONValue {
            try JSONParser.parse(#"{"type":"track","userId":"u","event":"E","timestamp":"\#(ISO8601.format(millis: received - days * day))"}"#)
        }
        let tooOld = try message(daysBefore: 31)
        do {
            _ = try aged.parse(tooOld, receivedAt: received)
            Issue.record("a message 31 days old was taken under a 30-day maximum age")
        } catch {
            #expect(error.field == "timestamp" && error.message.contains("30 days"), "\(error)")
        }
        #expect(try aged.parse(try message(daysBefore: 29), receivedAt: received).times.eventTime == received - 29 * day)
        #expect(try parser.parse(try message(daysBefore: 3_000), receivedAt: received).times.eventTime == received - 3_000 * day)
    }
}

@Suite("Revenue: a representable range, exact sums")
struct RevenueTests {
    @Test(arguments: ["9000000000000", "1e308", "-1e13", "\"1000000000000.000001\"", "123456789012345678901234567890"])
    func revenueOutsideTheRangeIsRefusedNamingTheField(_ literal: String) {
        #expect {
            try delta(#"{"type":"track","userId":"u","event":"Order Completed","messageId":"m","properties":{"revenue":\#(literal)}}"#)
        } throws: { error in
            (error as? MessageError)?.field == "properties.revenue"
        }
    }

    @Test(arguments: ["1000000000000", "-1000000000000", "0.000001", "\"19.99\""])
    func revenueAtTheLimitsIsAccepted(_ literal: String) throws {
        let d = try delta(#"{"type":"track","userId":"u","event":"Order Completed","messageId":"m","properties":{"revenue":\#(literal)}}"#)
        #expect(d.event?.revenueMicros != nil)
    }

    @Test func textThatIsNotANumberIsNotRevenue() throws {
        let d = try delta(#"{"type":"track","userId":"u","event":"Order Completed","messageId":"m","properties":{"revenue":"a lot"}}"#)
        #expect(d.event?.revenueMicros == nil)
    }

    /// The sums the issue saw wrap: two purchases of 9e12 each were refused above; twenty at the
    /// limit add up past Int64 and stay exact.
    @Test func sumsBeyondSixtyFourBitsStayExactAndRender() throws {
        var document = SourceDocument()
        for index in 0..<20 {
            document.apply(
                try delta(
                    #"{"type":"track","userId":"u","event":"Order Completed","messageId":"m\#(index)","properties":{"revenue":1000000000000}}"#),
                historyLimit: 5)
        }
        let total = document.head.aggregates["Order Completed"]!.revenueMicros
        #expect(total == Int128(20) * Int128(Revenue.limitMicros))
        let view = ProfileView(
            canonical: Identifier(kind: .userId, value: "u")!, members: [Identifier(kind: .userId, value: "u")!], head: document.head)
        let json = try JSONParser.parse(view.jsonBytes)
        #expect(json["aggregates"]?["events"]?["Order Completed"]?["revenue"] == .number(JSONNumber(literal: "20000000000000")!))
        // The stored form round-trips and renders the same from its bytes.
        let bytes = ProfileFormat.encode(view)
        #expect(try ProfileFormat.decode(ProfileView.self, from: bytes) == view)
        #expect(try EncodedProfileView(bytes).jsonBytes == view.jsonBytes)
    }

    /// Property: for random revenues in range, in random orders and merges, every total equals
    /// the exact sum and does not depend on the order.
    @Test func totalsAreExactWhateverTheOrder() throws {
        var random = SplitMix64(seed: 6)
        for _ in 0..<50 {
            var deltas: [ProfileDelta] = []
            var exact: Int128 = 0
            for index in 0..<(1 + random.below(40)) {
                let magnitude = random.chance(20) ? Revenue.limitMicros : Int64(random.next() % UInt64(Revenue.limitMicros))
                let micros = random.chance(30) ? -magnitude : magnitude
                exact += Int128(micros)
                var literal = JSONWriter()
                literal.write(fixedPoint: micros, scale: 6)
                deltas.append(
                    try delta(
                        #"{"type":"track","userId":"u","event":"Order Completed","messageId":"m\#(index)","properties":{"revenue":\#(literal.string)}}"#
                    ))
            }
            var one = SourceDocument(), other = SourceDocument(), merged = SourceDocument()
            for d in deltas { one.apply(d, historyLimit: 3) }
            for d in deltas.shuffled(using: &random) {
                if random.chance(50) { merged.apply(d, historyLimit: 3) } else { other.apply(d, historyLimit: 3) }
            }
            merged.merge(other, historyLimit: 3)
            #expect(one.head.aggregates["Order Completed"]?.revenueMicros == exact)
            #expect(merged.head.aggregates == one.head.aggregates)
        }
    }

    /// Property: replacing one counted entry by a later-ordered copy of it (a differing
    /// redelivery joined in) gives the totals a count from scratch gives, or declines.
    @Test func replacingAnEntryInTheTotalsEqualsCountingAgain() throws {
        var random = SplitMix64(seed: 11)
        let names = ["Order Completed", "Page Viewed"]
        var replaced = 0, declined = 0
        for _ in 0..<300 {
            var entries = (0..<(1 + random.below(8))).map { _ in
                LedgerEntry(
                    type: random.chance(80) ? .track : .identify, name: names[random.below(2)], time: Int64(random.below(20)),
                    revenueMicros: random.chance(50) ? Int64(random.below(1_000)) - 300 : nil)
            }
            var head = SourceHead()
            for entry in entries { head.count(entry) }
            let index = random.below(entries.count)
            var copy = entries[index]
            copy.time += Int64(random.below(3))
            if random.chance(30) { copy.revenueMicros = (copy.revenueMicros ?? 0) + 1 }
            if random.chance(10) { copy.name = names[random.below(2)] }
            guard !(copy < entries[index]) else { continue }
            let before = head
            guard head.recount(replacing: entries[index], with: copy) else {
                #expect(head == before, "a declined replacement changed the totals")
                #expect(copy.time > entries[index].time && before.firstSeen == entries[index].time)
                declined += 1
                continue
            }
            entries[index] = copy
            var counted = SourceHead()
            for entry in entries { counted.count(entry) }
            #expect(head == counted, "replacing \(before) entry \(index) with \(copy)")
            replaced += 1
        }
        #expect(replaced > 100 && declined > 10, "the cases were not all reached: \(replaced) replaced, \(declined) declined")
    }
}

@Suite("Decoders refuse what they cannot represent")
struct DecoderLimitTests {
    /// Found by `make fuzz` (binary harness): a delta whose times make the skew correction
    /// overflow trapped in `MessageTimes.init`. It is refused now (Tests/FuzzCorpus/binary/time-overflow).
    @Test func aDeltaWhoseTimesWouldOverflowIsRefused() throws {
        let bytes = hexBytes("030500070000000305012f000001ffffffffffffffffff0100012000")
        #expect(throws: BinaryDecodingError.self) { try ProfileFormat.decode(ProfileDelta.self, from: bytes) }
    }

    @Test func timesAtTheLimitDecodeAndBeyondAreRefused() throws {
        for (time, accepted) in [
            (MessageTimes.limit, true), (-MessageTimes.limit, true), (MessageTimes.limit + 1, false), (Int64.max, false), (Int64.min, false),
        ] {
            var writer = BinaryWriter()
            writer.write(signed: time)
            for _ in 0..<3 {
                writer.write(bool: true)
                writer.write(signed: time)
            }
            var reader = BinaryReader(writer.bytes)
            if accepted {
                #expect(try MessageTimes(from: &reader).receivedAt == time)
            } else {
                #expect(throws: BinaryDecodingError.self) { try MessageTimes(from: &reader) }
            }
        }
    }

    @Test func wideSignedValuesRoundTripAndNarrowOnesKeepTheirBytes() throws {
        var random = SplitMix64(seed: 128)
        for _ in 0..<2_000 {
            let narrow = Int64(bitPattern: random.next()) >> Int64(random.below(64))
            var old = BinaryWriter(), new = BinaryWriter()
            old.write(signed: narrow)
            new.write(signed128: Int128(narrow))
            #expect(old.bytes == new.bytes)
            let wide = Int128(Int64(bitPattern: random.next())) * Int128(Int64(bitPattern: random.next())) >> Int128(random.below(64))
            var writer = BinaryWriter()
            writer.write(signed128: wide)
            var reader = BinaryReader(writer.bytes)
            #expect(try reader.readSigned128() == wide)
        }
        for extreme in [Int128.max, Int128.min] {
            var writer = BinaryWriter()
            writer.write(signed128: extreme)
            var reader = BinaryReader(writer.bytes)
            #expect(try reader.readSigned128() == extreme)
        }
        // Twenty bytes of continuation, or bits beyond 128, are refused.
        var tooLong = BinaryReader([UInt8](repeating: 0xFF, count: 19) + [0x7F])
        #expect(throws: BinaryDecodingError.self) { try tooLong.readSigned128() }
        var tooWide = BinaryReader([UInt8](repeating: 0xFF, count: 18) + [0x04])
        #expect(throws: BinaryDecodingError.self) { try tooWide.readSigned128() }
    }
}

private func hexBytes(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}
