/// Identity rules, as Segment's Unify has them: values that never identify anyone, how many
/// identifiers of a kind one profile may hold, and which kind names a profile.
///
/// The rules decide at two moments: when a message is parsed (a blocked value is no
/// identifier), and whenever a component's people are computed from its links
/// (`IdentityResolver`: a link is kept only if neither end is blocked and the two groups it
/// joins stay within every limit). Because the second runs over the links held, a change of
/// rules reaches old data too: a store that finds its profiles built under another `version`
/// computes them all again (`ProfileWriting.reevaluateIdentity`), and every replica with the
/// same links and rules ends with the same profiles.
public struct IdentityRules: Sendable, Equatable {
    /// Names the rules in force; a store rebuilds its profiles when the version it built them
    /// under differs. Change it with any other field.
    public var version: Int
    /// Values (compared trimmed and case-insensitively) that identify nobody, of any kind.
    public var blockedValues: Set<String>
    /// The same, for one kind only.
    public var blockedByKind: [IdentifierKind: Set<String>]
    /// Regular expressions a whole (trimmed) value of the kind must not match.
    public var blockedPatterns: [IdentifierKind: [String]] { didSet { compiled = BlockedPatterns(blockedPatterns) } }
    /// The most identifiers of a kind one profile may hold; kinds not listed are unlimited.
    public var limits: [IdentifierKind: Int] { didSet { limitedKinds = limits.keys.sorted() } }
    /// `limits`' kinds in order: the order refusals are looked for in.
    private var limitedKinds: [IdentifierKind]
    /// Kind → a window (ms) its limit counts within: "5 anonymous ids within 7 days" lets a
    /// profile gather more over time, never more than 5 first linked within any 7 days. An
    /// identifier's time is the first assertion of its earliest link in the component.
    public var windows: [IdentifierKind: Int64]
    /// Kinds in priority order, for choosing a profile's canonical key: the built-in kinds
    /// not named follow in their default order, and custom kinds not named come after all of
    /// them (in name order).
    public var priority: [IdentifierKind]
    private var compiled: BlockedPatterns

    public init(
        version: Int = 0, blockedValues: Set<String> = Self.defaultBlockedValues, blockedByKind: [IdentifierKind: Set<String>] = [:],
        blockedPatterns: [IdentifierKind: [String]] = [:], limits: [IdentifierKind: Int] = [.userId: 1], windows: [IdentifierKind: Int64] = [:],
        priority: [IdentifierKind] = IdentifierKind.builtIn
    ) throws(IdentityRuleError) {
        self.version = version
        self.blockedValues = Set(blockedValues.map { $0.lowercased() })
        self.blockedByKind = blockedByKind.mapValues { Set($0.map { $0.lowercased() }) }
        self.blockedPatterns = blockedPatterns
        self.limits = limits
        limitedKinds = limits.keys.sorted()
        self.windows = windows
        self.priority = priority + IdentifierKind.builtIn.filter { !priority.contains($0) }
        compiled = try BlockedPatterns(validating: blockedPatterns)
        for (kind, limit) in limits where limit < 1 { throw IdentityRuleError("the limit of \(kind.name) must be at least 1") }
        for (kind, window) in windows where window < 1 || limits[kind] == nil {
            throw IdentityRuleError("the window of \(kind.name) must be positive and go with a limit of \(kind.name)")
        }
    }

    /// The built-in rules: the default blocked values, one user id per profile, the kinds'
    /// default priority.
    public static let builtIn: IdentityRules = {
        do { return try IdentityRules() } catch { preconditionFailure("the built-in identity rules are invalid: \(error)") }
    }()

    public static let defaultBlockedValues: Set<String> = [
        "null", "nil", "none", "undefined", "unknown", "anonymous", "0", "-1", "n/a", "na", "test", "[object object]",
    ]

    /// Whether `value`, as an identifier of `kind`, identifies nobody.
    public func isBlocked(_ value: String, kind: IdentifierKind) -> Bool {
        let trimmed = value.trimmingWhitespace()
        let folded = Self.folded(trimmed)
        if blockedValues.contains(folded) { return true }
        // Rules of a kind are the exception: most checks end here without another lookup.
        guard hasKindRules else { return false }
        if blockedByKind[kind]?.contains(folded) == true { return true }
        return compiled.matches(trimmed, kind: kind)
    }

    /// `text` lower-cased; a string with no upper-case ASCII and nothing beyond ASCII is its
    /// own lower case, without a copy.
    private static func folded(_ text: String) -> String {
        let own = text.utf8.withContiguousStorageIfAvailable { bytes in
            for byte in bytes where byte >= 0x80 || (byte >= 0x41 && byte <= 0x5A) { return false }
            return true
        }
        return own == true ? text : text.lowercased()
    }

    private var hasKindRules: Bool { !blockedByKind.isEmpty || !blockedPatterns.isEmpty }

    public func limit(for kind: IdentifierKind) -> Int { limits[kind] ?? Int.max }

    /// Why two groups of identifiers may not become one person, or nil when they may: an
    /// identifier blocked by the rules, or a kind over its limit. The one rule behind both the
    /// resolver's decisions and the reasons a profile's links give.
    public func refusal(joining a: IdentifierTally, with b: IdentifierTally) -> LinkRefusal? {
        if let kind = a.blocked ?? b.blocked { return .blocked(kind) }
        for kind in limitedKinds where a.count(of: kind) + b.count(of: kind) > limit(for: kind) {
            guard let window = windows[kind] else { return .limit(kind, limit(for: kind)) }
            // Only identifiers first linked within one window count together.
            if IdentifierTally.mostWithin(window, a.times(of: kind), b.times(of: kind)) > limit(for: kind) {
                return .limitWithin(kind, limit(for: kind), window)
            }
        }
        return nil
    }

    public func refusal(joining a: some Collection<Identifier>, with b: some Collection<Identifier>) -> LinkRefusal? {
        refusal(joining: IdentifierTally(a, rules: self), with: IdentifierTally(b, rules: self))
    }

    /// The canonical member of a set of identifiers: the smallest of the highest-priority kind
    /// (the smallest of all when no kind of it is in `priority`: custom kinds not named there).
    public func canonical(of members: some Collection<Identifier>) -> Identifier? {
        for kind in priority {
            if let best = members.filter({ $0.kind == kind }).min() { return best }
        }
        return members.min()
    }

    public static func == (a: IdentityRules, b: IdentityRules) -> Bool {
        (a.version, a.blockedValues, a.blockedByKind, a.blockedPatterns, a.limits, a.priority)
            == (b.version, b.blockedValues, b.blockedByKind, b.blockedPatterns, b.limits, b.priority) && a.windows == b.windows
    }
}

/// What the rules need to know of a group of identifiers: how many of each kind it holds, and
/// whether one of them is blocked.
public struct IdentifierTally: Sendable, Equatable {
    private var counts: [IdentifierKind: Int] = [:]
    /// For kinds whose limit has a window: each member's time, ascending.
    private var times: [IdentifierKind: [Int64]] = [:]
    /// The kind of a blocked member, if the group has one.
    public private(set) var blocked: IdentifierKind?

    /// `time(of:)`: when an identifier was first linked, for kinds whose limit has a window;
    /// without it every member counts as linked at once (the strictest reading).
    public init(_ identifiers: some Collection<Identifier>, rules: IdentityRules, time: (Identifier) -> Int64 = { _ in 0 }) {
        for identifier in identifiers {
            counts[identifier.kind, default: 0] += 1
            if rules.windows[identifier.kind] != nil { times[identifier.kind, default: []].append(time(identifier)) }
            if blocked == nil, rules.isBlocked(identifier.value, kind: identifier.kind) { blocked = identifier.kind }
        }
        for kind in times.keys { times[kind]!.sort() }
    }

    public func count(of kind: IdentifierKind) -> Int { counts[kind, default: 0] }

    func times(of kind: IdentifierKind) -> [Int64] { times[kind] ?? [] }

    /// The tally of the two groups as one.
    public mutating func add(_ other: IdentifierTally) {
        counts.merge(other.counts, uniquingKeysWith: +)
        times.merge(other.times) { ($0 + $1).sorted() }
        blocked = blocked ?? other.blocked
    }

    /// The most of two ascending lists of times, taken together, that lie within `window`
    /// (inclusive) of one another.
    static func mostWithin(_ window: Int64, _ a: [Int64], _ b: [Int64]) -> Int {
        let all = (a + b).sorted()
        var most = 0
        var start = 0
        for end in all.indices {
            while all[end] - all[start] > window { start += 1 }
            most = max(most, end - start + 1)
        }
        return most
    }
}

/// Why the identity rules keep two identifiers apart.
public enum LinkRefusal: Sendable, Equatable, CustomStringConvertible {
    /// An end is a value of this kind the rules block.
    case blocked(IdentifierKind)
    /// Joining would give a profile more identifiers of this kind than the limit.
    case limit(IdentifierKind, Int)
    /// The same, counting those first linked within the window (ms).
    case limitWithin(IdentifierKind, Int, Int64)

    public var description: String {
        switch self {
        case .blocked(let kind): "blocked: the \(kind.name) is a value the rules block"
        case .limit(let kind, let limit): "limit: a profile holds at most \(limit) \(kind.name)"
        case .limitWithin(let kind, let limit, let window):
            "limit: a profile gains at most \(limit) \(kind.name) within \(Self.duration(window))"
        }
    }
}

extension LinkRefusal {
    /// A window as people write it: whole days, else hours, else milliseconds.
    static func duration(_ millis: Int64) -> String {
        if millis % 86_400_000 == 0 { return "\(millis / 86_400_000) days" }
        if millis % 3_600_000 == 0 { return "\(millis / 3_600_000) hours" }
        return "\(millis) ms"
    }
}

public struct IdentityRuleError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The rules' blocked patterns, compiled once. `Regex` holds no mutable state once built, and
/// matching only reads it, so sharing it between threads is safe.
private struct BlockedPatterns: @unchecked Sendable {
    private var patterns: [IdentifierKind: [Regex<AnyRegexOutput>]] = [:]

    init(validating sources: [IdentifierKind: [String]]) throws(IdentityRuleError) {
        for (kind, list) in sources {
            for source in list {
                do { patterns[kind, default: []].append(try Regex(source)) } catch {
                    throw IdentityRuleError("the \(kind.name) pattern \"\(source)\" is not a regular expression: \(error)")
                }
            }
        }
    }

    /// Patterns already validated (the rules' own setter).
    init(_ sources: [IdentifierKind: [String]]) {
        do { try self.init(validating: sources) } catch { preconditionFailure("\(error)") }
    }

    func matches(_ value: String, kind: IdentifierKind) -> Bool {
        patterns[kind]?.contains { (try? $0.wholeMatch(in: value)) != nil } ?? false  // a match that throws matched nothing
    }
}
