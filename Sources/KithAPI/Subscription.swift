import KithCRDT
import KithCluster
import KithCrypto
import KithJSON
import KithProfile

/// A webhook subscription (docs/feed.md, "Webhooks"): the change feed for one purpose, with
/// filters, pushed to one URL. Kept as the cluster setting `subscription:NAME` (a replicated
/// last-writer-wins register, JSON); its delivery progress under `subscription-progress:NAME`,
/// written by the node that delivers it; a replay request under `subscription-replay:NAME`.
struct Subscription: Equatable, Sendable {
    static let settingPrefix = "subscription:"
    static let progressPrefix = "subscription-progress:"
    static let replayPrefix = "subscription-replay:"

    var name: String
    var url: WebhookURL
    var purpose: String
    var filter: FeedFilter
    var full: Bool
    /// Its secret's generation: a rotation moves it on (`WebhookSigner`).
    var generation: Int
    /// Where delivery starts when nothing was delivered yet.
    var start: FeedToken

    /// `^[a-z0-9][a-z0-9_-]{0,63}$`: a name that fits a path segment, a metric label and a key.
    static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...64).contains(bytes.count) else { return false }
        func lowerOrDigit(_ byte: UInt8) -> Bool { (0x61...0x7A).contains(byte) || (0x30...0x39).contains(byte) }
        return lowerOrDigit(bytes[0]) && bytes.allSatisfy { lowerOrDigit($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }

    var json: JSONValue {
        var members: [JSONObject.Member] = [
            .init("name", .string(name)), .init("url", .string(url.text)), .init("purpose", .string(purpose)),
            .init("view", .string(full ? "full" : "changes")), .init("generation", .number(JSONNumber(Int64(generation)))),
            .init("start", .string(FeedTokenText.text(start))),
        ]
        if let events = filter.events { members.append(.init("events", .array(events.sorted().map { .string($0) }))) }
        if let traits = filter.traits { members.append(.init("traits", .array(traits.sorted().map { .string($0) }))) }
        if let kinds = filter.kinds { members.append(.init("kinds", .array(kinds.map(\.name).sorted().map { .string($0) }))) }
        return .object(JSONObject(members))
    }

    /// The subscription a stored setting holds, or nil for one this version cannot read.
    init?(stored json: JSONValue) {
        guard let name = json["name"]?.stringValue, let url = json["url"]?.stringValue.flatMap({ try? WebhookURL(parsing: $0) }),
            let purpose = json["purpose"]?.stringValue, let startText = json["start"]?.stringValue,
            let start = FeedTokenText.parse(startText), case .number(let generation)? = json["generation"],
            let generationValue = Int(generation.literal)
        else { return nil }
        func names(_ key: String) -> Set<String>? { json[key]?.arrayValue.map { Set($0.compactMap(\.stringValue)) } }
        self.init(
            name: name, url: url, purpose: purpose,
            filter: FeedFilter(
                events: names("events"), traits: names("traits"), kinds: names("kinds").map { Set($0.compactMap(IdentifierKind.init(name:))) }),
            full: json["view"]?.stringValue == "full", generation: generationValue, start: start)
    }

    init(name: String, url: WebhookURL, purpose: String, filter: FeedFilter, full: Bool, generation: Int, start: FeedToken) {
        self.name = name
        self.url = url
        self.purpose = purpose
        self.filter = filter
        self.full = full
        self.generation = generation
        self.start = start
    }
}

/// A subscription's progress as the setting `subscription-progress:NAME` holds it (JSON).
extension SubscriptionProgress {
    var json: JSONValue {
        .object(
            JSONObject([
                .init("token", .string(FeedTokenText.text(token))), .init("delivered", .number(JSONNumber(Int64(delivered)))),
                .init("replayedRequest", .number(JSONNumber(replayedRequest))),
                .init(
                    "deadLetters",
                    .array(
                        deadLetters.map { letter in
                            .object(
                                JSONObject([
                                    .init("id", .number(JSONNumber(Int64(letter.id)))), .init("from", .string(FeedTokenText.text(letter.from))),
                                    .init("through", .string(FeedTokenText.text(letter.through))),
                                    .init("records", .number(JSONNumber(Int64(letter.records)))),
                                    .init("failedAt", .number(JSONNumber(letter.failedAt))), .init("error", .string(letter.error)),
                                ]))
                        })),
            ]))
    }

    init?(stored json: JSONValue) {
        func integer(_ value: JSONValue?) -> Int64? {
            guard case .number(let number)? = value else { return nil }
            return Int64(number.literal)
        }
        guard let token = json["token"]?.stringValue.flatMap(FeedTokenText.parse) else { return nil }
        let deadLetters = (json["deadLetters"]?.arrayValue ?? []).compactMap { letter -> DeadLetter? in
            guard let id = integer(letter["id"]), let from = letter["from"]?.stringValue.flatMap(FeedTokenText.parse),
                let through = letter["through"]?.stringValue.flatMap(FeedTokenText.parse)
            else { return nil }
            return DeadLetter(
                id: Int(id), from: from, through: through, records: Int(integer(letter["records"]) ?? 0), failedAt: integer(letter["failedAt"]) ?? 0,
                error: letter["error"]?.stringValue ?? "")
        }
        self.init(
            token: token, delivered: Int(integer(json["delivered"]) ?? 0), deadLetters: deadLetters,
            replayedRequest: integer(json["replayedRequest"]) ?? 0)
    }
}

/// Where a subscription's deliveries go: `http://host[:port]/path`. TLS is not built in (Kith
/// links libcrypto, not a TLS library): a receiver on another machine sits behind a local proxy
/// that terminates TLS.
public struct WebhookURL: Equatable, Sendable {
    public var host: String
    public var port: UInt16
    /// The request target: path and query, `/` at least.
    public var target: String

    public struct Invalid: Error, Equatable {
        public var reason: String
    }

    public var text: String { "http://" + (host.contains(":") ? "[\(host)]" : host) + (port == 80 ? "" : ":\(port)") + target }
    /// `host:port`, as the HTTP client takes it.
    public var address: String { (host.contains(":") ? "[\(host)]" : host) + ":\(port)" }

    public init(parsing text: String) throws(Invalid) {
        if text.hasPrefix("https://") {
            throw Invalid(reason: "https is not built in: point the subscription at a local proxy that terminates TLS (http://…)")
        }
        guard text.hasPrefix("http://"), text.utf8.count <= 2_048 else { throw Invalid(reason: "the url must be http://host[:port]/path") }
        let rest = text.dropFirst("http://".count)
        let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        var authority = rest[..<slash]
        target = slash == rest.endIndex ? "/" : String(rest[slash...])
        if target.hasPrefix("?") { target = "/" + target }
        guard !target.contains(where: { $0 == " " || $0 == "#" || $0.asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false }) else {
            throw Invalid(reason: "the url's path holds characters a request line cannot")
        }
        port = 80
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw Invalid(reason: "an IPv6 address must end with ]") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            authority = authority[authority.index(after: close)...]
            if authority.hasPrefix(":") {
                port = try Self.port(authority.dropFirst())
            } else if !authority.isEmpty {
                throw Invalid(reason: "unexpected text after the IPv6 address")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            port = try Self.port(authority[authority.index(after: colon)...])
        } else {
            host = String(authority)
        }
        guard !host.isEmpty, !host.contains("@"), host.utf8.count <= 253 else { throw Invalid(reason: "the url names no host") }
    }

    private static func port(_ text: Substring) throws(Invalid) -> UInt16 {
        guard let port = UInt16(text), port > 0 else { throw Invalid(reason: "the port must be 1 to 65535") }
        return port
    }
}

/// Each subscription's signing secret, derived from the cluster's secret (HMAC-SHA256 with a
/// label of its own), so every node signs alike and no secret is stored or replicated; a
/// rotation moves the generation. Deliveries carry `Kith-Signature: t=UNIX_SECONDS,v1=HEX`, the
/// HMAC-SHA256 under the secret of `t` ‖ `.` ‖ the body (as Stripe's signatures are).
public struct WebhookSigner: Sendable {
    private let clusterSecret: [UInt8]

    public init(secret: [UInt8]) { clusterSecret = secret }

    func secret(for name: String, generation: Int) -> String {
        "whsec_" + Crypto.hex(Crypto.hmacSHA256(key: clusterSecret, message: Array("kith webhook secret\u{0}\(name)\u{0}\(generation)".utf8)))
    }

    func signature(_ body: [UInt8], secret: String, at unixSeconds: Int64) -> String {
        let signed = Crypto.hmacSHA256(key: Array(secret.utf8), message: Array("\(unixSeconds).".utf8) + body)
        return "t=\(unixSeconds),v1=" + Crypto.hex(signed)
    }
}
