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
    private let membersAt: Int
    private let traitsAt: Int
    private let consentAt: Int
    private let groupsAt: Int
    private let recentAt: Int
    private let aggregatesAt: Int
    private let totalsAt: Int
    /// Whether the groups' live set is empty (the JSON leaves `groups` out then).
    private let hasGroups: Bool

    public init(_ bytes: [UInt8]) throws {
        var reader = BinaryReader(bytes)
        let found = try reader.readByte()
        guard found == ProfileFormat.version else { throw BinaryDecodingError(.unsupportedVersion, offset: 0, "format \(found)") }
        try Self.skipIdentifier(&reader)
        membersAt = reader.offset
        try Self.skipSequence(&reader, minimumItemSize: 2, Self.skipIdentifier)
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
            _ = try r.readSigned()
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

    public var jsonBytes: [UInt8] {
        var writer = JSONWriter(capacity: 1_024)
        writeJSON(to: &writer)
        return writer.bytes
    }

    /// The JSON of `ProfileView.writeJSON`, written from the encoding.
    public func writeJSON(to writer: inout JSONWriter) {
        bytes.withUnsafeBufferPointer { buffer in
            let text = Text(buffer: buffer)
            writer.writeObject { object in
                object.member("id") { w in writeCanonical(text, to: &w) }
                object.member("identifiers") { w in writeIdentifiers(text, to: &w) }
                object.member("traits") { w in writeTraits(text, to: &w) }
                object.member("consent") { w in writeConsent(text, to: &w) }
                if hasGroups { object.member("groups") { w in writeGroups(text, to: &w) } }
                object.member("aggregates") { w in writeAggregates(text, to: &w) }
                object.member("events") { w in writeEvents(text, to: &w) }
            }
        }
    }

    // MARK: - Rendering (re-reads what `init` checked, so a failed read is a broken invariant)

    /// The checked bytes, for slicing out what the renderer writes.
    private struct Text {
        let buffer: UnsafeBufferPointer<UInt8>
        subscript(range: Range<Int>) -> UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(rebasing: buffer[range]) }
    }

    private func reader(at offset: Int) -> BinaryReader { BinaryReader(bytes, at: offset) }

    private func writeCanonical(_ text: Text, to writer: inout JSONWriter) {
        var r = reader(at: 1)
        let (kind, value) = Self.identifier(&r)
        // The canonical identifier's description, `kind:value`, as one JSON string.
        writer.write(utf8: text[value], prefix: kind.descriptionPrefix)
    }

    /// `{"user_id":[…],"email":[…],…}`: kinds in their order, each kind's members in theirs.
    private func writeIdentifiers(_ text: Text, to writer: inout JSONWriter) {
        var r = reader(at: membersAt)
        let count = Self.count(&r)
        let start = r.offset
        var present: UInt8 = 0
        for _ in 0..<count { present |= 1 << Self.identifier(&r).kind.rawValue }
        writer.raw(byte: UInt8(ascii: "{"))
        var firstKind = true
        for kind in IdentifierKind.allCases where present & (1 << kind.rawValue) != 0 {
            if !firstKind { writer.raw(byte: UInt8(ascii: ",")) }
            firstKind = false
            writer.raw(static: kind.jsonKey)
            writer.raw(byte: UInt8(ascii: "["))
            var members = reader(at: start)
            var firstValue = true
            for _ in 0..<count {
                let member = Self.identifier(&members)
                guard member.kind == kind else { continue }
                if !firstValue { writer.raw(byte: UInt8(ascii: ",")) }
                firstValue = false
                writer.write(utf8: text[member.value])
            }
            writer.raw(byte: UInt8(ascii: "]"))
        }
        writer.raw(byte: UInt8(ascii: "}"))
    }

    private func writeTraits(_ text: Text, to writer: inout JSONWriter) {
        var r = reader(at: traitsAt)
        writer.writeObject { object in
            for _ in 0..<Self.count(&r) {
                let key = Self.range(&r)
                Self.skipStampUnchecked(&r)
                let value = Self.range(&r)
                object.member(utf8: text[key]) { $0.raw(text[value]) }
            }
        }
    }

    private func writeConsent(_ text: Text, to writer: inout JSONWriter) {
        var r = reader(at: consentAt)
        var first = true
        writer.raw(byte: UInt8(ascii: "{"))
        for _ in 0..<Self.count(&r) {
            let category = Self.range(&r)
            let granted = Self.unchecked { try r.readBool() }
            let time = Self.unchecked { try r.readSigned() }
            _ = Self.range(&r)
            let source = Self.range(&r)
            guard !Self.isReserved(text[category]) else { continue }
            if !first { writer.raw(byte: UInt8(ascii: ",")) }
            first = false
            writer.write(utf8: text[category])
            writer.raw(static: granted ? #":{"status":"granted","time":"# : #":{"status":"denied","time":"#)
            writer.write(time: time)
            writer.raw(static: #","source":"#)
            writer.write(utf8: text[source])
            writer.raw(byte: UInt8(ascii: "}"))
        }
        writer.raw(byte: UInt8(ascii: "}"))
    }

    private func writeGroups(_ text: Text, to writer: inout JSONWriter) {
        var r = reader(at: groupsAt)
        let count = Self.count(&r)
        writer.writeArray(0..<count) { w, _ in
            w.write(utf8: text[Self.range(&r)])
            for _ in 0..<Self.count(&r) { Self.skipStampUnchecked(&r) }
        }
    }

    private func writeAggregates(_ text: Text, to writer: inout JSONWriter) {
        var totals = reader(at: totalsAt)
        let messages = Self.unchecked { try totals.readSigned() }
        let firstSeen = Self.unchecked { try totals.readOptionalSigned() }
        let lastSeen = Self.unchecked { try totals.readOptionalSigned() }
        writer.raw(static: #"{"messages":"#)
        writer.write(integer: messages)
        if let firstSeen {
            writer.raw(static: #","firstSeen":"#)
            writer.write(time: firstSeen)
        }
        if let lastSeen {
            writer.raw(static: #","lastSeen":"#)
            writer.write(time: lastSeen)
        }
        writer.raw(static: #","events":{"#)
        var r = reader(at: aggregatesAt)
        for index in 0..<Self.count(&r) {
            let name = Self.range(&r)
            let count = Self.unchecked { try r.readSigned() }
            let revenue = Self.unchecked { try r.readSigned() }
            if index > 0 { writer.raw(byte: UInt8(ascii: ",")) }
            writer.write(utf8: text[name])
            writer.raw(static: #":{"count":"#)
            writer.write(integer: count)
            if revenue != 0 {
                writer.raw(static: #","revenue":"#)
                writer.write(fixedPoint: revenue, scale: 6)
            }
            writer.raw(byte: UInt8(ascii: "}"))
        }
        writer.raw(static: "}}")
    }

    /// Each event as `JSONWriter.writeEvent` writes it, its fixed text written in whole pieces.
    private func writeEvents(_ text: Text, to writer: inout JSONWriter) {
        var r = reader(at: recentAt)
        writer.raw(byte: UInt8(ascii: "["))
        for index in 0..<Self.count(&r) {
            let messageId = Self.range(&r)
            let type = MessageType(code: Self.unchecked { try r.readByte() })!
            let name = Self.range(&r)
            let time = Self.unchecked { try r.readSigned() }
            let channel = Self.range(&r)
            _ = Self.unchecked { try r.readOptionalSigned() }
            let properties = Self.range(&r)
            writer.raw(static: index == 0 ? #"{"messageId":"# : #",{"messageId":"#)
            writer.write(utf8: text[messageId])
            writer.raw(static: Self.typeAndName(type))
            writer.write(utf8: text[name])
            writer.raw(static: #","timestamp":"#)
            writer.write(time: time)
            writer.raw(static: #","channel":"#)
            writer.write(utf8: text[channel])
            writer.raw(static: #","properties":"#)
            writer.raw(text[properties])
            writer.raw(byte: UInt8(ascii: "}"))
        }
        writer.raw(byte: UInt8(ascii: "]"))
    }

    /// The `type` member and the key of the name that follows it (`event` for a track).
    private static func typeAndName(_ type: MessageType) -> StaticString {
        switch type {
        case .identify: #","type":"identify","name":"#
        case .track: #","type":"track","event":"#
        case .page: #","type":"page","name":"#
        case .screen: #","type":"screen","name":"#
        case .group: #","type":"group","name":"#
        case .alias: #","type":"alias","name":"#
        }
    }

    private static func isReserved(_ category: UnsafeBufferPointer<UInt8>) -> Bool {
        let prefix = ConsentDecision.reservedPrefix.utf8
        return category.count >= prefix.count && zip(category, prefix).allSatisfy { $0 == $1 }
    }

    // MARK: - Reading checked bytes

    /// A read of bytes `init` already checked: it cannot fail unless the two walks disagree.
    private static func unchecked<T>(_ read: () throws -> T) -> T {
        do { return try read() } catch { preconditionFailure("EncodedProfileView re-read what it checked and failed: \(error)") }
    }

    private static func count(_ r: inout BinaryReader) -> Int { unchecked { try r.readCount() } }
    private static func range(_ r: inout BinaryReader) -> Range<Int> { unchecked { try r.readBytesRange() } }

    private static func identifier(_ r: inout BinaryReader) -> (kind: IdentifierKind, value: Range<Int>) {
        let kind = IdentifierKind(rawValue: unchecked { try r.readByte() })!
        return (kind, range(&r))
    }

    private static func skipStampUnchecked(_ r: inout BinaryReader) {
        unchecked { try skipStamp(&r) }
    }

    // MARK: - Checking walk

    private static func skipSequence(
        _ r: inout BinaryReader, minimumItemSize: Int, _ item: (inout BinaryReader) throws -> Void
    ) throws {
        for _ in 0..<(try r.readCount(minimumItemSize: minimumItemSize)) { try item(&r) }
    }

    /// An identifier as `Identifier`'s decoder accepts it: a known kind and a value in the form
    /// `Identifier(kind:value:)` keeps (so the view shows what decoding would give).
    private static func skipIdentifier(_ r: inout BinaryReader) throws {
        let offset = r.offset
        guard let kind = IdentifierKind(rawValue: try r.readByte()) else { throw BinaryDecodingError(.invalidValue, offset: offset, "identifier") }
        let value = try r.readStringRange()
        let stored = r.bytes.withUnsafeBufferPointer { Identifier.isStoredForm(utf8: UnsafeBufferPointer(rebasing: $0[value]), kind: kind) }
        guard stored else { throw BinaryDecodingError(.invalidValue, offset: offset, "identifier") }
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
        let offset = r.offset
        guard MessageType(code: try r.readByte()) != nil else { throw BinaryDecodingError(.unknownTag, offset: offset, "message type") }
        _ = try r.readStringRange()
        _ = try r.readSigned()
        _ = try r.readStringRange()
        _ = try r.readOptionalSigned()
        try skipJSONText(&r)
    }
}
