import KithCRDT
import KithJSON

/// A profile view as it is stored (`ProfileFormat.encode(view)`), read in place.
///
/// Reads render a profile straight from these bytes. Decoding a `ProfileView` builds a string, an
/// array or a map for every trait, consent decision and event, and frees them again after the
/// JSON is written: most of what a point read cost. Here nothing is built per field.
///
/// `init` walks the encoding once and checks what `ProfileView`'s decoder checks for the values a
/// reader sees: the format version, every length and count against the bytes left, tags, bools,
/// valid UTF-8 in every string, non-empty JSON texts, identifiers in their normal form, no
/// trailing bytes. Like the decoder, it trusts JSON texts (trait values, event properties) as
/// Kith's own writing (`RawJSON`): a sealed row is authenticated before it gets here. It does not
/// check what only merging relies on (keys in ascending order, tag sets); `decoded()` does. So
/// rendering cannot fail: it re-reads a structure that was checked. The JSON is byte for byte
/// what `ProfileView.writeJSON` writes for the decoded view (a property test holds them equal).
public struct EncodedProfileView: Sendable {
    public let bytes: [UInt8]
    /// The canonical identifier and the members, decoded: a read under the policy decides on
    /// them as a whole and records the members in the audit.
    public let canonical: Identifier
    public let members: [Identifier]
    let membersAt: Int
    let traitsAt: Int
    let consentAt: Int
    let groupsAt: Int
    let recentAt: Int
    let aggregatesAt: Int
    let totalsAt: Int
    /// Whether the groups' live set is not empty (the JSON leaves `groups` out when it is).
    public let hasGroups: Bool

    public init(_ bytes: [UInt8]) throws {
        var reader = BinaryReader(bytes)
        let found = try reader.readByte()
        guard found == ProfileFormat.version else { throw BinaryDecodingError(.unsupportedVersion, offset: 0, "format \(found)") }
        canonical = try Self.readIdentifier(&reader)
        membersAt = reader.offset
        members = try reader.readSequence(minimumItemSize: 2, Self.readIdentifier)
        traitsAt = reader.offset
        try Self.skipSequence(&reader, minimumItemSize: 2) { r in
            _ = try r.readStringRange()
            try Self.skipStamp(&r)
            try Self.skipJSONText(&r)
        }
        consentAt = reader.offset
        try Self.skipSequence(&reader, minimumItemSize: 2) { r in
            _ = try r.readStringRange()
            _ = try r.readBool()
            try Self.skipStamp(&r)
            _ = try r.readStringRange()
        }
        groupsAt = reader.offset
        hasGroups = try Self.skipTagMap(&reader) > 0
        _ = try Self.skipTagMap(&reader)
        recentAt = reader.offset
        try Self.skipSequence(&reader, minimumItemSize: 8, Self.skipEvent)
        aggregatesAt = reader.offset
        try Self.skipSequence(&reader, minimumItemSize: 3) { r in
            _ = try r.readStringRange()
            _ = try r.readSigned()
            _ = try r.readSigned128()
        }
        totalsAt = reader.offset
        _ = try reader.readSigned()
        _ = try reader.readOptionalSigned()
        _ = try reader.readOptionalSigned()
        try reader.expectEnd()
        self.bytes = bytes
    }

    /// The view itself, with every check of the full decoder.
    public func decoded() throws -> ProfileView {
        try ProfileFormat.decode(ProfileView.self, from: bytes)
    }

    /// The JSON of `ProfileView.writeJSON`, written from the encoding.
    /// Written straight into the array returned. A profile's JSON is two to three times its
    /// stored bytes (times, member names); four times is room for all but escape-heavy text.
    public var jsonBytes: [UInt8] {
        [UInt8](jsonCapacity: 4 * bytes.count + 256) { writeJSON(to: &$0) }
    }

    /// Members in `ProfileView.writeJSON`'s order, which is not the stored one (aggregates
    /// come before events, and their totals are stored last).
    public func writeJSON<Output: JSONOutput & ~Copyable>(to output: inout Output) {
        bytes.withUnsafeBufferPointer { text in
            output.append(static: #"{"id":"#)
            writeCanonical(text, to: &output)
            output.append(static: #","identifiers":"#)
            writeIdentifiers(text, to: &output)
            output.append(static: #","traits":"#)
            writeTraits(text, to: &output)
            output.append(static: #","consent":"#)
            writeConsent(text, to: &output)
            if hasGroups {
                output.append(static: #","groups":"#)
                writeGroups(text, to: &output)
            }
            output.append(static: #","aggregates":"#)
            writeAggregates(text, revenue: .plain, to: &output)
            output.append(static: #","events":"#)
            writeEvents(text, to: &output)
            output.append(byte: UInt8(ascii: "}"))
        }
    }

    // MARK: - Rendering (re-reads what `init` checked)

    func writeCanonical<Output: JSONOutput & ~Copyable>(_ text: UnsafeBufferPointer<UInt8>, to output: inout Output) {
        var r = CheckedBytes(text, at: 1)
        let (code, stored) = r.identifier()
        // The canonical identifier's description, `kind:value`, as one JSON string (a custom
        // kind's stored value is that already).
        if let kind = IdentifierKind(builtInCode: code) {
            output.appendString(utf8: r[stored], prefix: kind.descriptionPrefix)
        } else {
            output.appendString(utf8: r[stored])
        }
    }

    /// `{"user_id":[…],"email":[…],…,"loyalty_card":[…]}`: kinds in their order, each kind's
    /// members in theirs. Members are encoded in order, so custom kinds come last, each kind's
    /// members together.
    func writeIdentifiers<Output: JSONOutput & ~Copyable>(_ text: UnsafeBufferPointer<UInt8>, to output: inout Output) {
        var r = CheckedBytes(text, at: membersAt)
        let count = r.count()
        let start = r.offset
        var present: UInt8 = 0
        for _ in 0..<count { present |= 1 << r.identifier().code }
        output.append(byte: UInt8(ascii: "{"))
        var firstKind = true
        for kind in IdentifierKind.builtIn where present & (1 << kind.code) != 0 {
            if !firstKind { output.append(byte: UInt8(ascii: ",")) }
            firstKind = false
            output.append(static: kind.jsonKey)
            output.append(byte: UInt8(ascii: "["))
            var members = CheckedBytes(text, at: start)
            var firstValue = true
            for _ in 0..<count {
                let member = members.identifier()
                guard member.code == kind.code else { continue }
                if !firstValue { output.append(byte: UInt8(ascii: ",")) }
                firstValue = false
                output.appendString(utf8: members[member.stored])
            }
            output.append(byte: UInt8(ascii: "]"))
        }
        if present & (1 << IdentifierKind.customCode) != 0 {
            writeCustomIdentifiers(text, count: count, start: start, firstKind: firstKind, to: &output)
        }
        output.append(byte: UInt8(ascii: "}"))
    }

    /// The custom kinds' members, `"name":[values]` a kind, kinds in the order they first
    /// appear (members are sorted, so in kind order); each member's stored value is
    /// `name:value` (checked by `init`).
    private func writeCustomIdentifiers<Output: JSONOutput & ~Copyable>(
        _ text: UnsafeBufferPointer<UInt8>, count: Int, start: Int, firstKind: Bool, to output: inout Output
    ) {
        func custom(_ r: inout CheckedBytes) -> (name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>)? {
            let member = r.identifier()
            guard member.code == IdentifierKind.customCode else { return nil }
            let stored = r[member.stored]
            let colon = stored.firstIndex(of: 0x3A)!
            return (UnsafeBufferPointer(rebasing: stored[..<colon]), UnsafeBufferPointer(rebasing: stored[(colon + 1)...]))
        }
        var names: [UnsafeBufferPointer<UInt8>] = []
        var r = CheckedBytes(text, at: start)
        for _ in 0..<count {
            if let member = custom(&r), !names.contains(where: { $0.elementsEqual(member.name) }) { names.append(member.name) }
        }
        for (index, name) in names.enumerated() {
            if index > 0 || !firstKind { output.append(byte: UInt8(ascii: ",")) }
            output.appendString(utf8: name)
            output.append(static: ":[")
            var members = CheckedBytes(text, at: start)
            var firstValue = true
            for _ in 0..<count {
                guard let member = custom(&members), member.name.elementsEqual(name) else { continue }
                if !firstValue { output.append(byte: UInt8(ascii: ",")) }
                firstValue = false
                output.appendString(utf8: member.value)
            }
            output.append(byte: UInt8(ascii: "]"))
        }
    }

    func writeTraits<Output: JSONOutput & ~Copyable>(_ text: UnsafeBufferPointer<UInt8>, to output: inout Output) {
        var first = true
        output.append(byte: UInt8(ascii: "{"))
        forEachTrait(in: text) { name, value in
            if !first { output.append(byte: UInt8(ascii: ",")) }
            first = false
            output.appendString(utf8: name)
            output.append(byte: UInt8(ascii: ":"))
            output.append(value)
        }
        output.append(byte: UInt8(ascii: "}"))
    }

    func writeConsent<Output: JSONOutput & ~Copyable>(_ text: UnsafeBufferPointer<UInt8>, to output: inout Output) {
        var first = true
        output.append(byte: UInt8(ascii: "{"))
        forEachConsent(in: text) { consent in
            guard !Self.isReserved(consent.name) else { return }
            if !first { output.append(byte: UInt8(ascii: ",")) }
            first = false
            output.appendString(utf8: consent.name)
            output.append(static: consent.granted ? #":{"status":"granted","time":"# : #":{"status":"denied","time":"#)
            ISO8601.append(millis: consent.time, to: &output, quoted: true)
            output.append(static: #","source":"#)
            output.appendString(utf8: consent.source)
            output.append(byte: UInt8(ascii: "}"))
        }
        output.append(byte: UInt8(ascii: "}"))
    }

    func writeGroups<Output: JSONOutput & ~Copyable>(_ text: UnsafeBufferPointer<UInt8>, to output: inout Output) {
        var first = true
        output.append(byte: UInt8(ascii: "["))
        forEachGroup(in: text) { name in
            if !first { output.append(byte: UInt8(ascii: ",")) }
            first = false
            output.appendString(utf8: name)
        }
        output.append(byte: UInt8(ascii: "]"))
    }

    func writeAggregates<Output: JSONOutput & ~Copyable>(
        _ text: UnsafeBufferPointer<UInt8>, revenue display: JSONWriter.RevenueDisplay, to output: inout Output
    ) {
        var totals = CheckedBytes(text, at: totalsAt)
        let messages = totals.signed()
        let firstSeen = totals.optionalSigned()
        let lastSeen = totals.optionalSigned()
        output.append(static: #"{"messages":"#)
        output.appendFixedPoint(messages, scale: 0)
        if let firstSeen {
            output.append(static: #","firstSeen":"#)
            ISO8601.append(millis: firstSeen, to: &output, quoted: true)
        }
        if let lastSeen {
            output.append(static: #","lastSeen":"#)
            ISO8601.append(millis: lastSeen, to: &output, quoted: true)
        }
        output.append(static: #","events":{"#)
        var first = true
        forEachAggregate(in: text) { aggregate in
            if !first { output.append(byte: UInt8(ascii: ",")) }
            first = false
            output.appendString(utf8: aggregate.name)
            output.append(static: #":{"count":"#)
            output.appendFixedPoint(aggregate.count, scale: 0)
            output.appendRevenueMember(aggregate.revenue, display)
            output.append(byte: UInt8(ascii: "}"))
        }
        output.append(static: "}}")
    }

    /// Each event as `JSONWriter.writeEvent` writes it, its fixed text written in whole pieces.
    func writeEvents<Output: JSONOutput & ~Copyable>(_ text: UnsafeBufferPointer<UInt8>, to output: inout Output) {
        var first = true
        output.append(byte: UInt8(ascii: "["))
        forEachEvent(in: text) { event in
            output.append(static: first ? #"{"messageId":"# : #",{"messageId":"#)
            first = false
            output.appendString(utf8: event.messageId)
            output.append(static: event.type.jsonTypeAndNameKey)
            output.appendString(utf8: event.name)
            output.append(static: #","timestamp":"#)
            ISO8601.append(millis: event.time, to: &output, quoted: true)
            if let clientTimestamp = event.clientTimestamp {
                output.append(static: #","clientTimestamp":"#)
                ISO8601.append(millis: clientTimestamp, to: &output, quoted: true)
            }
            output.append(static: #","channel":"#)
            output.appendString(utf8: event.channel)
            output.append(static: #","properties":"#)
            output.append(event.properties)
            output.append(byte: UInt8(ascii: "}"))
        }
        output.append(byte: UInt8(ascii: "]"))
    }

    // MARK: - Walks over the parts (each part's layout is read here only)

    /// Each trait's name and JSON text, in the stored (ascending) order.
    func forEachTrait(in text: UnsafeBufferPointer<UInt8>, _ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Void)
    {
        var r = CheckedBytes(text, at: traitsAt)
        for _ in 0..<r.count() {
            let name = r.range()
            r.skipStamp()
            let value = r.range()
            body(r[name], r[value])
        }
    }

    /// A consent register as stored, under its name.
    struct StoredConsent {
        var name: UnsafeBufferPointer<UInt8>
        var granted: Bool
        var time: Int64
        var tiebreak: UnsafeBufferPointer<UInt8>
        var source: UnsafeBufferPointer<UInt8>
    }

    /// Each consent register, reserved names included, in the stored order.
    func forEachConsent(in text: UnsafeBufferPointer<UInt8>, _ body: (StoredConsent) -> Void) {
        var r = CheckedBytes(text, at: consentAt)
        for _ in 0..<r.count() {
            let name = r.range()
            let granted = r.bool()
            let time = r.signed()
            let tiebreak = r.range()
            let source = r.range()
            body(StoredConsent(name: r[name], granted: granted, time: time, tiebreak: r[tiebreak], source: r[source]))
        }
    }

    /// Each live group's name, in order (`ORSet.elements`).
    func forEachGroup(in text: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
        var r = CheckedBytes(text, at: groupsAt)
        for _ in 0..<r.count() {
            let name = r.range()
            for _ in 0..<r.count() { r.skipStamp() }
            body(r[name])
        }
    }

    /// An event's totals as stored.
    struct StoredAggregate {
        var name: UnsafeBufferPointer<UInt8>
        var count: Int64
        var revenue: Int128
    }

    func forEachAggregate(in text: UnsafeBufferPointer<UInt8>, _ body: (StoredAggregate) -> Void) {
        var r = CheckedBytes(text, at: aggregatesAt)
        for _ in 0..<r.count() {
            let name = r.range()
            let count = r.signed()
            body(StoredAggregate(name: r[name], count: count, revenue: r.signed128()))
        }
    }

    /// A recent event as stored.
    struct StoredEvent {
        var messageId: UnsafeBufferPointer<UInt8>
        var type: MessageType
        var name: UnsafeBufferPointer<UInt8>
        var time: Int64
        var clientTimestamp: Int64?
        var channel: UnsafeBufferPointer<UInt8>
        var revenueMicros: Int64?
        var properties: UnsafeBufferPointer<UInt8>
    }

    func forEachEvent(in text: UnsafeBufferPointer<UInt8>, _ body: (StoredEvent) -> Void) {
        var r = CheckedBytes(text, at: recentAt)
        for _ in 0..<r.count() {
            let messageId = r.range()
            let typeByte = r.byte()
            let type = MessageType(code: typeByte & ~clientTimestampFlag)!
            let name = r.range()
            let time = r.signed()
            let clientTimestamp = typeByte & clientTimestampFlag != 0 ? r.signed() : nil
            let channel = r.range()
            let revenueMicros = r.optionalSigned()
            let properties = r.range()
            body(
                StoredEvent(
                    messageId: r[messageId], type: type, name: r[name], time: time, clientTimestamp: clientTimestamp, channel: r[channel],
                    revenueMicros: revenueMicros, properties: r[properties]))
        }
    }

    private static func isReserved(_ category: UnsafeBufferPointer<UInt8>) -> Bool {
        let prefix = ConsentDecision.reservedPrefix.utf8
        return category.count >= prefix.count && zip(category, prefix).allSatisfy { $0 == $1 }
    }

    /// A second walk over bytes `init` checked, for rendering: no errors to handle, and a trap
    /// (never a read outside the bytes) should the two walks ever disagree.
    struct CheckedBytes {
        let bytes: UnsafeBufferPointer<UInt8>
        private(set) var offset: Int

        init(_ bytes: UnsafeBufferPointer<UInt8>, at offset: Int) {
            self.bytes = bytes
            self.offset = offset
        }

        subscript(range: Range<Int>) -> UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(rebasing: bytes[range]) }

        mutating func byte() -> UInt8 {
            precondition(offset < bytes.count, "EncodedProfileView re-read past what it checked")
            defer { offset += 1 }
            return bytes[offset]
        }

        @inline(__always)
        mutating func varint() -> UInt64 {
            precondition(offset < bytes.count, "EncodedProfileView re-read past what it checked")
            let first = bytes[offset]
            if first < 0x80 {
                offset += 1
                return UInt64(first)
            }
            return longVarint()
        }

        private mutating func longVarint() -> UInt64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                let next = byte()
                value |= UInt64(next & 0x7F) << shift
                if next & 0x80 == 0 { return value }
                shift += 7
            }
        }

        mutating func signed() -> Int64 {
            let raw = varint()
            return Int64(bitPattern: (raw >> 1) ^ (0 &- (raw & 1)))
        }

        /// A revenue sum (`write(signed128:)`), checked by the walk that made the view.
        mutating func signed128() -> Int128 {
            var raw: UInt128 = 0
            var shift = 0
            while true {
                let next = byte()
                raw |= UInt128(next & 0x7F) << shift
                if next & 0x80 == 0 { break }
                shift += 7
            }
            return Int128(bitPattern: (raw >> 1) ^ (0 &- (raw & 1)))
        }

        mutating func count() -> Int { Int(varint()) }
        mutating func bool() -> Bool { byte() != 0 }
        mutating func optionalSigned() -> Int64? { bool() ? signed() : nil }

        mutating func range() -> Range<Int> {
            let length = count()
            precondition(length <= bytes.count - offset, "EncodedProfileView re-read past what it checked")
            defer { offset += length }
            return offset..<(offset + length)
        }

        /// A string (checked as UTF-8 by `init`), made a `String`.
        mutating func string() -> String { String(decoding: self[range()], as: UTF8.self) }

        /// A member's kind code and stored value (`Identifier.storedValue`).
        mutating func identifier() -> (code: UInt8, stored: Range<Int>) {
            (byte(), range())
        }

        mutating func skipStamp() {
            _ = signed()
            _ = range()
        }
    }

    // MARK: - Checking walk

    private static func skipSequence(
        _ r: inout BinaryReader, minimumItemSize: Int, _ item: (inout BinaryReader) throws -> Void
    ) throws {
        for _ in 0..<(try r.readCount(minimumItemSize: minimumItemSize)) { try item(&r) }
    }

    /// An identifier as `Identifier`'s decoder accepts it: a known kind and a value in the form
    /// `Identifier(kind:value:)` keeps (so the view shows what decoding would give).
    private static func readIdentifier(_ r: inout BinaryReader) throws -> Identifier {
        let offset = r.offset
        let code = try r.readByte()
        let value = try r.readStringRange()
        let identifier = r.bytes.withUnsafeBufferPointer { bytes -> Identifier? in
            let stored = UnsafeBufferPointer(rebasing: bytes[value])
            guard Identifier.isStoredForm(code: code, utf8: stored) else { return nil }
            return Identifier(code: code, storedValue: String(decoding: stored, as: UTF8.self))
        }
        guard let identifier else { throw BinaryDecodingError(.invalidValue, offset: offset, "identifier") }
        return identifier
    }

    private static func skipStamp(_ r: inout BinaryReader) throws {
        _ = try r.readSigned()
        _ = try r.readStringRange()
    }

    private static func skipJSONText(_ r: inout BinaryReader) throws {
        let offset = r.offset
        guard !(try r.readBytesRange()).isEmpty else { throw BinaryDecodingError(.invalidValue, offset: offset, "empty json text") }
    }

    /// One map of an add-wins set (element → non-empty tags); returns how many elements it has.
    private static func skipTagMap(_ r: inout BinaryReader) throws -> Int {
        let count = try r.readCount(minimumItemSize: 2)
        for _ in 0..<count {
            _ = try r.readStringRange()
            let offset = r.offset
            let tags = try r.readCount()
            guard tags > 0 else { throw BinaryDecodingError(.invalidValue, offset: offset, "or-set entry") }
            for _ in 0..<tags { try skipStamp(&r) }
        }
        return count
    }

    private static func skipEvent(_ r: inout BinaryReader) throws {
        _ = try r.readStringRange()
        let (_, hasClientTimestamp) = try EventRecord.readType(&r)
        _ = try r.readStringRange()
        _ = try r.readSigned()
        if hasClientTimestamp { _ = try r.readTime() }
        _ = try r.readStringRange()
        _ = try r.readOptionalSigned()
        try skipJSONText(&r)
    }
}
