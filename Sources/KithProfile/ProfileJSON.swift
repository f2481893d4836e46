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
        appendRaw { ISO8601.append(millis: millis, to: &$0, quoted: true) }
    }

    public mutating func writeIdentifiers(_ members: [Identifier]) {
        writeObject { object in
            for kind in IdentifierKind.allCases where members.contains(where: { $0.kind == kind }) {
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
    /// by the privacy API, not here).
    public mutating func writeConsent(_ head: SourceHead) {
        writeObject { object in
            for (category, register) in head.consent.pairs where !category.hasPrefix(ConsentDecision.reservedPrefix) {
                object.member(category) { w in
                    w.writeObject { o in
                        o.member("status", string: register.granted ? "granted" : "denied")
                        o.member("time") { $0.write(time: register.stamp.time) }
                        o.member("source", string: register.source)
                    }
                }
            }
        }
    }

    /// How revenue sums are written: as numbers, replaced by a placeholder, or left out.
    public enum RevenueDisplay: Sendable, Equatable {
        case plain
        case replaced(by: String)
        case omitted
    }

    public mutating func writeAggregates(_ head: SourceHead, revenue: RevenueDisplay = .plain) {
        writeObject { object in
            object.member("messages", integer: head.messageCount)
            if let first = head.firstSeen { object.member("firstSeen") { $0.write(time: first) } }
            if let last = head.lastSeen { object.member("lastSeen") { $0.write(time: last) } }
            object.member("events") { w in
                w.writeObject { o in
                    for (key, aggregate) in head.aggregates.pairs {
                        o.member(key) { w in
                            w.writeObject { e in
                                e.member("count", integer: aggregate.count)
                                guard aggregate.revenueMicros != 0 else { return }
                                switch revenue {
                                case .plain: e.member("revenue") { $0.write(fixedPoint: aggregate.revenueMicros, scale: 6) }
                                case .replaced(let text): e.member("revenue", string: text)
                                case .omitted: break
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    public mutating func writeEvent(_ record: EventRecord) {
        writeObject { object in
            object.member("messageId", string: record.messageId)
            object.member("type", string: record.type.rawValue)
            object.member(record.type == .track ? "event" : "name", string: record.name)
            object.member("timestamp") { $0.write(time: record.time) }
            object.member("channel", string: record.channel)
            object.member("properties") { $0.write(raw: record.properties) }
        }
    }
}
