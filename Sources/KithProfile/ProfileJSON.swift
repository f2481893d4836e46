import KithJSON

/// The JSON a reader gets for a profile. Shapes follow Segment's Profiles API where it has one
/// (traits as an object, events as a list with `event`, `timestamp`, `properties`).
extension ProfileView {
    public func writeJSON(to writer: inout JSONWriter) {
        writer.writeObject { object in
            object.member("id", string: canonical.description)
            object.member("identifiers") { $0.writeIdentifiers(members) }
            object.member("traits") { $0.writeTraits(head) }
            object.member("consent") { $0.writeConsent(head) }
            if !head.groups.live.isEmpty {
                object.member("groups") { w in w.writeArray(head.groups.elements) { $0.write(string: $1) } }
            }
            object.member("aggregates") { $0.writeAggregates(head) }
            object.member("events") { w in w.writeArray(head.recent) { $0.writeEvent($1) } }
        }
    }

    public var jsonBytes: [UInt8] {
        var writer = JSONWriter(capacity: 1_024)
        writeJSON(to: &writer)
        return writer.bytes
    }
}

extension JSONWriter {
    /// An ISO 8601 time as a JSON string, written straight into the buffer.
    public mutating func write(time millis: Int64) {
        ISO8601.append(millis: millis, to: &self, quoted: true)
    }

    public mutating func writeIdentifiers(_ members: [Identifier]) {
        writeObject { object in
            for kind in members.kinds {
                object.member(kind.name) { w in w.writeArray(members.lazy.filter { $0.kind == kind }) { $0.write(string: $1.value) } }
            }
        }
    }

    public mutating func writeTraits(_ head: SourceHead) {
        writeObject { object in
            for (key, register) in head.traits.pairs { object.member(key) { $0.write(raw: register.value) } }
        }
    }

    /// The customer's consent decisions (Kith's own registers, such as restriction, are shown
    /// by the privacy API, not here). Fixed text is written in whole pieces, as for events.
    public mutating func writeConsent(_ head: SourceHead) {
        raw(byte: UInt8(ascii: "{"))
        var first = true
        for (category, register) in head.consent.pairs where !category.hasPrefix(ConsentDecision.reservedPrefix) {
            if !first { raw(byte: UInt8(ascii: ",")) }
            first = false
            write(string: category)
            raw(static: register.granted ? #":{"status":"granted","time":"# : #":{"status":"denied","time":"#)
            write(time: register.stamp.time)
            raw(static: #","source":"#)
            write(string: register.source)
            raw(byte: UInt8(ascii: "}"))
        }
        raw(byte: UInt8(ascii: "}"))
    }

    /// How revenue sums are written: as numbers, replaced by a placeholder, or left out.
    public enum RevenueDisplay: Sendable, Equatable {
        case plain
        case replaced(by: String)
        case omitted
    }

    public mutating func writeAggregates(_ head: SourceHead, revenue: RevenueDisplay = .plain) {
        raw(static: #"{"messages":"#)
        write(integer: head.messageCount)
        if let first = head.firstSeen {
            raw(static: #","firstSeen":"#)
            write(time: first)
        }
        if let last = head.lastSeen {
            raw(static: #","lastSeen":"#)
            write(time: last)
        }
        raw(static: #","events":{"#)
        for (index, (key, aggregate)) in head.aggregates.pairs.enumerated() {
            if index > 0 { raw(byte: UInt8(ascii: ",")) }
            write(string: key)
            raw(static: #":{"count":"#)
            write(integer: aggregate.count)
            appendRevenueMember(aggregate.revenueMicros, revenue)
            raw(byte: UInt8(ascii: "}"))
        }
        raw(static: "}}")
    }

    /// An event: its fixed text (member names, the type) in whole pieces.
    public mutating func writeEvent(_ record: EventRecord) {
        raw(static: #"{"messageId":"#)
        write(string: record.messageId)
        raw(static: record.type.jsonTypeAndNameKey)
        write(string: record.name)
        raw(static: #","timestamp":"#)
        write(time: record.time)
        if let clientTimestamp = record.clientTimestamp {
            raw(static: #","clientTimestamp":"#)
            write(time: clientTimestamp)
        }
        raw(static: #","channel":"#)
        write(string: record.channel)
        raw(static: #","properties":"#)
        write(raw: record.properties)
        raw(byte: UInt8(ascii: "}"))
    }
}

extension JSONOutput where Self: ~Copyable {
    /// A total's `,"revenue":…` member as `display` shows it; nothing when it carries none. The
    /// one writing of it for decoded views (`JSONWriter.writeAggregates`) and stored ones
    /// (`EncodedProfileView`).
    mutating func appendRevenueMember(_ micros: Int128, _ display: JSONWriter.RevenueDisplay) {
        guard micros != 0 else { return }
        switch display {
        case .plain:
            append(static: #","revenue":"#)
            appendFixedPoint128(micros, scale: 6)
        case .replaced(let text):
            append(static: #","revenue":"#)
            var text = text
            text.withUTF8 { appendString(utf8: $0) }
        case .omitted: break
        }
    }
}

extension MessageType {
    /// The `type` member of an event's JSON and the key of the name that follows it (`event`
    /// for a track), as one piece of fixed text.
    var jsonTypeAndNameKey: StaticString {
        switch self {
        case .identify: #","type":"identify","name":"#
        case .track: #","type":"track","event":"#
        case .page: #","type":"page","name":"#
        case .screen: #","type":"screen","name":"#
        case .group: #","type":"group","name":"#
        case .alias: #","type":"alias","name":"#
        }
    }
}
