import KithCRDT
import KithJSON

/// The Segment spec calls Kith understands.
public enum MessageType: String, CaseIterable, Sendable, Comparable {
    case identify, track, page, screen, group, alias

    var code: UInt8 { UInt8(Self.allCases.firstIndex(of: self)!) }
    init?(code: UInt8) {
        guard Int(code) < Self.allCases.count else { return nil }
        self = Self.allCases[Int(code)]
    }

    public static func < (a: MessageType, b: MessageType) -> Bool { a.code < b.code }

    /// Whether the message records a behavioural event (kept in history and aggregates).
    public var isEvent: Bool { self == .track || self == .page || self == .screen }
}

/// Why a message was rejected: a code for programs, a sentence for people, and the field.
public struct MessageError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable { case missingField = "missing_field", invalidField = "invalid_field", unknownType = "unknown_type" }

    public var code: Code
    public var field: String
    public var message: String

    public init(_ code: Code, field: String, _ message: String) {
        self.code = code
        self.field = field
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}

/// The four times of a message, in Unix milliseconds, and the event time Kith orders it by.
///
/// As Segment does, the client's time is corrected for its clock skew:
/// `receivedAt − (sentAt − originalTimestamp)` when the client sent `sentAt`, otherwise the
/// client's own timestamp, otherwise the time Kith received it. The **event time** — the order
/// of the data, its LWW stamp, and what an erasure is compared with — is that time, but never
/// later than `receivedAt`: no client clock can date data after the moment a node took it in,
/// so no client can push a profile into the future or place data beyond an erasure made after
/// it was received (docs/crdt.md, "Which clock orders what"). The client's times are kept as
/// given, and `clientTime` says when the order differs from what the client said.
public struct MessageTimes: Equatable, Sendable {
    /// Times Kith represents: within ±10^15 ms of 1970 (about ±31,700 years), so that the
    /// arithmetic on them cannot overflow. Parsed ISO 8601 times (years 0000–9999) are inside;
    /// decoders refuse anything outside.
    public static let limit: Int64 = 1_000_000_000_000_000
    public static let representable = -limit...limit

    public var eventTime: Int64
    public var timestamp: Int64?
    public var originalTimestamp: Int64?
    public var sentAt: Int64?
    public var receivedAt: Int64

    public init(timestamp: Int64?, originalTimestamp: Int64?, sentAt: Int64?, receivedAt: Int64) {
        for time in [timestamp, originalTimestamp, sentAt, receivedAt] {
            precondition(time.map(Self.representable.contains) ?? true, "message time \(time!) is outside ±10^15 ms")
        }
        self.timestamp = timestamp
        self.originalTimestamp = originalTimestamp
        self.sentAt = sentAt
        self.receivedAt = receivedAt
        eventTime = min(
            Self.clientTime(timestamp: timestamp, originalTimestamp: originalTimestamp, sentAt: sentAt, receivedAt: receivedAt), receivedAt)
    }

    /// The client's time of the event, skew-corrected as Segment does, before the ceiling.
    public var clientTime: Int64 {
        Self.clientTime(timestamp: timestamp, originalTimestamp: originalTimestamp, sentAt: sentAt, receivedAt: receivedAt)
    }

    /// Whether the client dated the event after the node received it (its time is then not the order).
    public var isClientTimeAhead: Bool { clientTime > receivedAt }

    /// The timestamp the client gave, when it dated the event after the node received it: kept
    /// beside the event time and shown in reads, so that what the client said is not lost.
    public var clientTimestampAhead: Int64? { isClientTimeAhead ? originalTimestamp ?? timestamp : nil }

    private static func clientTime(timestamp: Int64?, originalTimestamp: Int64?, sentAt: Int64?, receivedAt: Int64) -> Int64 {
        let original = originalTimestamp ?? timestamp
        if let original, let sentAt { return receivedAt - (sentAt - original) }
        return original ?? receivedAt
    }
}

/// A behavioural event as kept in a profile's recent history.
public struct EventRecord: Equatable, Sendable, Comparable {
    public var messageId: String
    public var type: MessageType
    public var name: String
    public var time: Int64
    public var channel: String
    /// Revenue in millionths of the currency unit, exact.
    public var revenueMicros: Int64?
    /// The event's properties as compact JSON text (an object).
    public var properties: RawJSON
    /// The timestamp the client gave, when it dated the event after its receipt and `time` was
    /// held at the receipt instead (`MessageTimes.clientTimestampAhead`); nil otherwise.
    public var clientTimestamp: Int64?

    public init(
        messageId: String, type: MessageType, name: String, time: Int64, channel: String, revenueMicros: Int64? = nil, properties: RawJSON,
        clientTimestamp: Int64? = nil
    ) {
        self.messageId = messageId
        self.type = type
        self.name = name
        self.time = time
        self.channel = channel
        self.revenueMicros = revenueMicros
        self.properties = properties
        self.clientTimestamp = clientTimestamp
    }

    /// The aggregate an event counts towards: the event name for `track`, prefixed for page/screen.
    public var aggregateKey: String { Self.aggregateKey(type: type, name: name) }

    static func aggregateKey(type: MessageType, name: String) -> String {
        type == .track ? name : "\(type.rawValue):\(name)"
    }

    /// History order: newer first; the full tuple breaks every tie so the order is total.
    public static func < (a: EventRecord, b: EventRecord) -> Bool {
        if a.time != b.time { return a.time < b.time }
        if a.messageId != b.messageId { return a.messageId < b.messageId }
        return (a.type, a.name, a.revenueMicros ?? Int64.min, a.channel, a.properties, a.clientTimestamp ?? Int64.min)
            < (b.type, b.name, b.revenueMicros ?? Int64.min, b.channel, b.properties, b.clientTimestamp ?? Int64.min)
    }
}

/// One customer's consent decision for a category from one message.
public struct ConsentDecision: Equatable, Sendable {
    /// Categories under this prefix are Kith's own; messages cannot set them.
    public static let reservedPrefix = "kith:"
    /// Restriction of processing (GDPR Art. 18) is a consent register: *denied* restricts. Being
    /// a register, it replicates, travels ahead of a backlog and resolves concurrent decisions to
    /// the restrictive side, exactly as consent does.
    public static let processingCategory = "kith:processing"

    public var category: String
    public var granted: Bool

    public init(category: String, granted: Bool) {
        self.category = category
        self.granted = granted
    }
}

/// The CRDT delta a message produces: everything it says about its subject, stamped with the
/// message's own event time and id (never with the node that happened to receive it).
public struct ProfileDelta: Equatable, Sendable {
    public var messageId: String
    public var type: MessageType
    /// The identifier whose source document the message's data belongs to.
    public var subject: Identifier
    public var channel: String
    public var times: MessageTimes
    /// Traits set by the message (identify only), keys unique.
    public var traits: JSONObject
    public var consent: [ConsentDecision]
    public var event: EventRecord?
    /// Identifiers the message says are the same person as `subject` (sorted, unique).
    public var links: [Identifier]
    public var groupId: String?

    public init(
        messageId: String, type: MessageType, subject: Identifier, channel: String, times: MessageTimes, traits: JSONObject = JSONObject(),
        consent: [ConsentDecision] = [], event: EventRecord? = nil, links: [Identifier] = [], groupId: String? = nil
    ) {
        self.messageId = messageId
        self.type = type
        self.subject = subject
        self.channel = channel
        self.times = times
        self.traits = traits
        self.consent = consent.sorted { $0.category < $1.category }
        self.event = event
        self.links = links
        self.groupId = groupId
    }

    /// The LWW stamp of everything this message writes.
    public var stamp: LWWStamp { LWWStamp(time: times.eventTime, tiebreak: messageId) }
}

/// Turns Segment-spec JSON into deltas, leniently where real clients differ and strictly where
/// a wrong guess would corrupt a profile.
public struct SegmentMessageParser: Sendable {
    public static let maximumMessageIdBytes = 200
    public var rules: IdentityRules
    public var sources: IdentifierSources
    /// The oldest a message may be dated, in ms before its receipt (`maxEventAge`); nil: any age.
    /// Data dated older never enters, so what an erasure or retention dropped that long ago
    /// cannot come back through ingest.
    public var maximumAge: Int64?

    public init(rules: IdentityRules = .builtIn, sources: IdentifierSources = .builtIn, maximumAge: Int64? = nil) {
        precondition(maximumAge.map { $0 > 0 } ?? true, "a maximum age is positive, not \(maximumAge ?? 0)")
        self.rules = rules
        self.sources = sources
        self.maximumAge = maximumAge
    }

    /// Parses one message. `defaultType` is the type implied by the endpoint (`/v1/track`);
    /// `receivedAt` is when the node received it.
    public func parse(_ json: JSONValue, defaultType: MessageType? = nil, receivedAt: Int64) throws(MessageError) -> ProfileDelta {
        guard case .object(let message) = json else { throw MessageError(.invalidField, field: "", "a message must be a JSON object") }
        let type = try messageType(message, defaultType: defaultType)
        let context = message["context"]?.objectValue ?? JSONObject()
        let userId = try identifierValue(message, "userId", kind: .userId)
        let anonymousId = try identifierValue(message, "anonymousId", kind: .anonymousId)

        var traits = JSONObject()
        if type == .identify { traits = try mergedTraits(message, context: context) }
        let found = foundIdentifiers(message, context: context, traits: type == .identify ? traits : nil)

        let subject: Identifier
        var links: [Identifier] = found
        if type == .alias {
            guard let userId else { throw MessageError(.missingField, field: "userId", "alias needs a userId") }
            guard let previous = try identifierValue(message, "previousId", kind: .anonymousId) else {
                throw MessageError(.missingField, field: "previousId", "alias needs a previousId")
            }
            subject = userId
            links.append(previous)
            if let anonymousId { links.append(anonymousId) }
        } else {
            // A touchpoint that knows the customer only by, say, a phone number or a card: the
            // message is about the identifier that would name their profile.
            guard let primary = userId ?? anonymousId ?? rules.canonical(of: found) else {
                throw MessageError(
                    .missingField, field: "userId",
                    "a message needs a userId, an anonymousId or another identifier (email, phone, device id, external ids)")
            }
            subject = primary
            if let userId, let anonymousId { links.append(anonymousId == subject ? userId : anonymousId) }
        }
        links = Array(Set(links.filter { $0 != subject })).sorted()

        let times = try messageTimes(message, receivedAt: receivedAt)
        if let maximumAge, times.eventTime < receivedAt - maximumAge {
            throw MessageError(
                .invalidField, field: "timestamp",
                "timestamp is more than \(maximumAge / 86_400_000) days before the message was received (maxEventAge)")
        }
        let messageId = try messageIdentifier(message, json: json)
        let channel = channelName(message, context: context)
        return ProfileDelta(
            messageId: messageId, type: type, subject: subject, channel: channel, times: times, traits: traits,
            consent: consentDecisions(context), event: try eventRecord(type, message, messageId, times, channel),
            links: links, groupId: type == .group ? try requiredString(message, "groupId") : nil)
    }

    /// The group document's share of a `group` call (`person`, parsed from `json`): a delta about
    /// `group_id:{groupId}` carrying the call's traits, with a message id derived from the call's
    /// (so a retried call is one change), or nil for any other call. The group's traits never
    /// reach the person's document; the person's holds only that they belong to the group.
    public func groupDelta(_ json: JSONValue, for person: ProfileDelta) throws(MessageError) -> ProfileDelta? {
        guard person.type == .group, let groupId = person.groupId, case .object(let message) = json else { return nil }
        guard let subject = Identifier(kind: .groupId, value: groupId) else {
            throw MessageError(.invalidField, field: "groupId", "groupId must be 1 to 255 bytes without control characters")
        }
        let traits = try objectField(message, "traits", name: "traits")
        return ProfileDelta(
            messageId: person.messageId + "#group", type: .identify, subject: subject, channel: person.channel, times: person.times,
            traits: traits)
    }

    private func messageType(_ message: JSONObject, defaultType: MessageType?) throws(MessageError) -> MessageType {
        guard let raw = message["type"], !raw.isNull else {
            guard let defaultType else { throw MessageError(.missingField, field: "type", "a message needs a type") }
            return defaultType
        }
        guard let name = raw.stringValue, let type = MessageType(rawValue: name) else {
            throw MessageError(.unknownType, field: "type", "type must be one of identify, track, page, screen, group, alias")
        }
        if let defaultType, defaultType != type {
            throw MessageError(.invalidField, field: "type", "type \(type.rawValue) sent to the \(defaultType.rawValue) endpoint")
        }
        return type
    }

    /// The identifiers at the configured paths and in `context.externalIds`: values that are not
    /// usable identifiers of their kind are skipped, never refused.
    private func foundIdentifiers(_ message: JSONObject, context: JSONObject, traits: JSONObject?) -> [Identifier] {
        var found: [Identifier] = []
        sources.sources.withUnsafeBufferPointer { buffer in
            guard let first = buffer.baseAddress else { return }
            for index in 0..<buffer.count {
                if let text = IdentifierSources.value(at: first + index, message: message, context: context, traits: traits),
                    let identifier = usableIdentifier(buffer[index].kind, text)
                {
                    found.append(identifier)
                }
            }
        }
        if case .array(let entries)? = context["externalIds"] {
            for entry in entries {
                guard let type = entry["type"]?.stringValue, let kind = sources.externalIdTypes[type], let id = entry["id"]?.stringValue,
                    let identifier = usableIdentifier(kind, id)
                else { continue }
                found.append(identifier)
            }
        }
        return found
    }

    /// `text` as an identifier of `kind`, unless it is blocked or not a value of that kind: an
    /// email needs an `@`; a phone number is brought to E.164 (`PhoneNumber`), a custom kind's
    /// value to its configured form.
    private func usableIdentifier(_ kind: IdentifierKind, _ text: String) -> Identifier? {
        guard !rules.isBlocked(text, kind: kind), kind != .email || text.contains("@") else { return nil }
        return sources.identifier(kind, text)
    }

    /// A string (or a number, which some clients send) that is not null, empty or blocked.
    private func identifierValue(_ message: JSONObject, _ field: String, kind: IdentifierKind) throws(MessageError) -> Identifier? {
        guard let text = try optionalString(message, field), !rules.isBlocked(text, kind: kind) else { return nil }
        guard let identifier = Identifier(kind: kind, value: text) else {
            throw MessageError(.invalidField, field: field, "\(field) must be 1 to 255 bytes without control characters")
        }
        return identifier
    }

    private func optionalString(_ message: JSONObject, _ field: String) throws(MessageError) -> String? {
        switch message[field] {
        case nil, .null?: return nil
        case .string(let s)?: return s.isEmpty ? nil : s
        case .number(let n)?: return n.literal
        default: throw MessageError(.invalidField, field: field, "\(field) must be a string")
        }
    }

    private func requiredString(_ message: JSONObject, _ field: String) throws(MessageError) -> String {
        guard let value = try optionalString(message, field) else { throw MessageError(.missingField, field: field, "\(field) is required") }
        guard value.utf8.count <= 1_024 else { throw MessageError(.invalidField, field: field, "\(field) is longer than 1024 bytes") }
        return value
    }

    /// Identify traits: `context.traits` first, then `traits` over them.
    private func mergedTraits(_ message: JSONObject, context: JSONObject) throws(MessageError) -> JSONObject {
        var merged = try objectField(context, "traits", name: "context.traits")
        for member in try objectField(message, "traits", name: "traits").members {
            if let index = merged.members.firstIndex(where: { $0.key == member.key }) {
                merged.members[index] = member
            } else {
                merged.members.append(member)
            }
        }
        return merged
    }

    private func objectField(_ object: JSONObject, _ field: String, name: String) throws(MessageError) -> JSONObject {
        switch object[field] {
        case nil, .null?: return JSONObject()
        case .object(let o)?: return o
        default: throw MessageError(.invalidField, field: name, "\(name) must be an object")
        }
    }

    private func messageTimes(_ message: JSONObject, receivedAt: Int64) throws(MessageError) -> MessageTimes {
        func time(_ field: String) throws(MessageError) -> Int64? {
            switch message[field] {
            case nil, .null?: return nil
            case .string(let text)?:
                guard let millis = ISO8601.parseMillis(text) else {
                    throw MessageError(.invalidField, field: field, "\(field) must be an ISO 8601 time such as 2025-10-09T08:26:40.123Z")
                }
                return millis
            default: throw MessageError(.invalidField, field: field, "\(field) must be an ISO 8601 string")
            }
        }
        return MessageTimes(
            timestamp: try time("timestamp"), originalTimestamp: try time("originalTimestamp"), sentAt: try time("sentAt"),
            receivedAt: receivedAt)
    }

    /// The client's messageId, or — for the rare client that sends none — one derived from the
    /// message's content, so that a retried copy still deduplicates.
    private func messageIdentifier(_ message: JSONObject, json: JSONValue) throws(MessageError) -> String {
        if let id = try optionalString(message, "messageId") {
            guard id.utf8.count <= Self.maximumMessageIdBytes, !id.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
                throw MessageError(.invalidField, field: "messageId", "messageId must be at most 200 bytes without control characters")
            }
            return id
        }
        let text = json.jsonText
        return "kith-" + hex(fnv1a64(text, basis: 0xCBF2_9CE4_8422_2325)) + hex(fnv1a64(text, basis: 0x84222325_CBF29CE4))
    }

    private func channelName(_ message: JSONObject, context: JSONObject) -> String {
        let name =
            context["channel"]?.stringValue ?? message["channel"]?.stringValue
            ?? context["library"]?["name"]?.stringValue ?? "unknown"
        return truncated(name, toBytes: 64)
    }

    private func consentDecisions(_ context: JSONObject) -> [ConsentDecision] {
        guard case .object(let preferences)? = context["consent"]?["categoryPreferences"] else { return [] }
        var decisions: [ConsentDecision] = []
        // `kith:` categories are Kith's own (restriction of processing): only the privacy API sets them.
        for member in preferences.members
        where !member.key.isEmpty && member.key.utf8.count <= 100 && !member.key.hasPrefix(ConsentDecision.reservedPrefix) {
            if case .bool(let granted) = member.value { decisions.append(ConsentDecision(category: member.key, granted: granted)) }
        }
        return decisions.sorted { $0.category < $1.category }
    }

    private func eventRecord(
        _ type: MessageType, _ message: JSONObject, _ messageId: String, _ times: MessageTimes, _ channel: String
    ) throws(MessageError) -> EventRecord? {
        guard type.isEvent else { return nil }
        let properties = try objectField(message, "properties", name: "properties")
        let name: String
        if type == .track {
            name = try requiredString(message, "event")
        } else {
            name = try optionalString(message, "name") ?? properties["name"]?.stringValue ?? ""
        }
        return EventRecord(
            messageId: messageId, type: type, name: truncated(name, toBytes: 256), time: times.eventTime,
            channel: channel, revenueMicros: try revenue(properties), properties: RawJSON(.object(properties)),
            clientTimestamp: times.clientTimestampAhead)
    }

    /// `properties.revenue` as a number or a numeric string, in exact micro-units. Text that is
    /// not a number is not revenue (it stays a property); a number outside ±10^12 is refused,
    /// never rounded, wrapped or left out of the totals unsaid.
    private func revenue(_ properties: JSONObject) throws(MessageError) -> Int64? {
        let number: JSONNumber
        switch properties["revenue"] {
        case .number(let n)?: number = n
        case .string(let s)?:
            guard let n = JSONNumber(literal: s) else { return nil }
            number = n
        default: return nil
        }
        guard let micros = number.fixedPoint(scale: 6), Revenue.isRepresentable(micros) else {
            throw MessageError(.invalidField, field: "properties.revenue", "properties.revenue must be a number from -1000000000000 to 1000000000000")
        }
        return micros
    }
}

func fnv1a64(_ text: String, basis: UInt64) -> UInt64 {
    var hash = basis
    for byte in text.utf8 {
        hash ^= UInt64(byte)
        hash &*= 0x100_0000_01B3
    }
    return hash
}

func hex(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

/// `text` cut to at most `limit` bytes of UTF-8, at a scalar boundary.
func truncated(_ text: String, toBytes limit: Int) -> String {
    guard text.utf8.count > limit else { return text }
    var result = ""
    var used = 0
    for scalar in text.unicodeScalars {
        let size = UTF8.width(scalar)
        if used + size > limit { break }
        result.unicodeScalars.append(scalar)
        used += size
    }
    return result
}
