import KithCRDT
import KithJSON
import KithProfile

/// Forget keys for pure tests: readable, not keyed (the store uses HMAC-SHA256).
public struct PlainHasher: ForgetKeyHasher {
    public init() {}
    public func forgetKey(for identifier: Identifier) -> String { "h(\(identifier))" }
}

/// Segment messages shaped like Benchmarks/scripts/generate-workload.py: identify (with email and other
/// traits), track (by userId or an anonymous id, revenue on orders), alias, consent, ~5 % exact
/// redeliveries, timestamps skewed by up to two seconds, a few customers much hotter than others.
public struct WorkloadGenerator {
    public var random: SplitMix64
    public let customers: Int
    /// Whether some messages carry `sentAt`, so that their corrected event time depends on when
    /// the receiving node got them (two nodes then hold differing copies of a redelivery).
    public var sendsSentAt = false
    /// With `sendsSentAt`, the percent of messages that carry it.
    public var sentAtPercent = 30
    /// What message ids start with (generators feeding different nodes need different ones).
    public var messageIdPrefix = "m-"
    /// Whether a track call by a known user carries the user's first anonymous id too, as a
    /// browser's library sends it after an identify: the event then links the two. Draws
    /// nothing from `random`.
    public var tracksCarryAnonymousId = false
    /// Percent of messages dated a year ahead with no `sentAt` (a client whose clock is wrong).
    public var futureDatedPercent = 0
    /// Customer churn: every `dayMillis` of message time after the first message, `percent` of
    /// the pool leaves for good and as many new customers arrive (the pool on day d is customers
    /// d·percent·customers/100 onwards). Nil: one pool for ever. Draws nothing from `random`.
    public var churn: (dayMillis: Int64, percent: Int)?
    private var firstTime: Int64?
    private var sent: [JSONValue] = []
    private var index = 0
    static let events = ["Page Viewed", "Product Viewed", "Order Completed", "Store Visit"]
    static let categories = ["Analytics", "Advertising", "Personalization"]

    public init(seed: UInt64, customers: Int) {
        random = SplitMix64(seed: seed)
        self.customers = customers
    }

    /// The next message, dated 50 ms after the one before (give or take the client's skew).
    public mutating func next() -> JSONValue { next(at: nil) }

    /// The next message, dated `now` give or take two seconds of client clock skew (nil: 50 ms
    /// after the one before, from 1,760,000,000,000).
    public mutating func next(at now: Int64?) -> JSONValue {
        defer { index += 1 }
        if !sent.isEmpty && random.chance(5) { return sent[random.below(sent.count)] }
        // Skewed popularity: half the traffic goes to the first fifth of customers.
        var c = random.chance(50) ? random.below(max(1, customers / 5)) : random.below(customers)
        let time = now ?? 1_760_000_000_000 + Int64(index) * 50
        if let churn {
            let first = firstTime ?? time
            firstTime = first
            c += Int((time - first) / churn.dayMillis) * churn.percent * customers / 100
        }
        let userId = "u-\(c)"
        let ms = time + Int64(random.below(4_001)) - 2_000
        var message: [String: JSONValue] = [
            "messageId": .string("\(messageIdPrefix)\(index)"), "timestamp": .string(ISO8601.format(millis: ms)),
            "context": ["channel": .string(["web", "pos", "mobile"][random.below(3)])],
        ]
        if futureDatedPercent > 0 && random.chance(futureDatedPercent) {
            message["timestamp"] = .string(ISO8601.format(millis: ms + 365 * 86_400_000))
        } else if sendsSentAt && random.chance(sentAtPercent) {
            message["sentAt"] = .string(ISO8601.format(millis: ms + Int64(random.below(300))))
        }
        let roll = random.below(100)
        if roll < 30 {
            var traits: [String: JSONValue] = [:]
            if random.chance(40) { traits["email"] = .string("c\(c)@example.com") }
            if random.chance(50) { traits["city"] = .string(["Leeds", "Paris", "Oslo"][random.below(3)]) }
            if random.chance(30) { traits["plan"] = .string(["free", "plus"][random.below(2)]) }
            message["type"] = "identify"
            message["userId"] = .string(userId)
            message["traits"] = object(traits)
            if random.chance(20) { message["anonymousId"] = .string("a-\(c)-\(random.below(3))") }
            // Every fifth customer has a loyalty card (a custom kind), drawing nothing from the
            // random stream: seeds give the messages they gave before, plus the card.
            if c % 5 == 0 {
                message["context"] = [
                    "channel": message["context"]!["channel"]!,
                    "externalIds": [["id": .string("\(7_000 + c)"), "type": "loyalty_card", "collection": "users", "encoding": "none"]],
                ]
            }
        } else if roll < 88 {
            let event = Self.events[random.below(Self.events.count)]
            var properties: [String: JSONValue] = ["sku": .string("s\(random.below(50))")]
            if event == "Order Completed" {
                properties["revenue"] = .number(JSONNumber(literal: "\(random.below(400)).\(random.below(100))")!)
            }
            message["type"] = "track"
            message["event"] = .string(event)
            message["properties"] = object(properties)
            if random.chance(20) {
                message["anonymousId"] = .string("a-\(c)-\(random.below(3))")
            } else {
                message["userId"] = .string(userId)
                if tracksCarryAnonymousId { message["anonymousId"] = .string("a-\(c)-0") }
            }
        } else if roll < 94 {
            message["type"] = "alias"
            message["userId"] = .string(userId)
            message["previousId"] = .string("a-\(c)-\(random.below(3))")
        } else {
            var preferences: [String: JSONValue] = [:]
            for category in Self.categories { preferences[category] = .bool(random.chance(60)) }
            message["type"] = "identify"
            message["userId"] = .string(userId)
            message["context"] = ["channel": "web", "consent": ["categoryPreferences": object(preferences)]]
        }
        let value = object(message)
        sent.append(value)
        return value
    }

    private func object(_ members: [String: JSONValue]) -> JSONValue {
        .object(JSONObject(members.keys.sorted().map { JSONObject.Member($0, members[$0]!) }))
    }

    /// The built-in sources and the `loyalty_card` kind the generator's cards are of: a parser
    /// without it takes no card from the messages.
    public static let identifierSources = IdentifierSources.builtIn.adding(
        [], externalIdTypes: [:], phoneRegion: nil, customKinds: [IdentifierKind(custom: "loyalty_card")!: .digits])

    /// `count` messages parsed into deltas.
    public static func deltas(seed: UInt64, customers: Int, count: Int) -> [ProfileDelta] {
        var generator = WorkloadGenerator(seed: seed, customers: customers)
        let parser = SegmentMessageParser(sources: identifierSources)
        return (0..<count).map { _ in try! parser.parse(generator.next(), receivedAt: 1_760_000_100_000) }
    }
}

extension IdentifierKind {
    /// The built-in kinds and custom ones whose names test the ordering of keys: `card1` sorts
    /// before `card` (`1` before `:`), `card` before `loyalty_card`.
    public static let examples: [IdentifierKind] = builtIn + ["card", "card1", "loyalty_card"].map { IdentifierKind(custom: $0)! }
}
