// Helpers shared by the test targets (not linked into any product).
import KithCRDT
import Testing

/// Checks the three join laws on `cases` seeded random triples and returns the seed of any failure.
public func expectJoinLaws<T: CRDT>(
    _ type: T.Type, cases: Int = 1_000, seed: UInt64, sourceLocation: SourceLocation = #_sourceLocation,
    generate: (inout SplitMix64) -> T
) {
    var random = SplitMix64(seed: seed)
    for index in 0..<cases {
        let a = generate(&random), b = generate(&random), c = generate(&random)
        let context = "\(T.self) case \(index) seed \(seed)"
        #expect(a.merging(b) == b.merging(a), "commutativity: \(context)", sourceLocation: sourceLocation)
        #expect(a.merging(b).merging(c) == a.merging(b.merging(c)), "associativity: \(context)", sourceLocation: sourceLocation)
        #expect(a.merging(a) == a, "idempotence: \(context)", sourceLocation: sourceLocation)
        if a.merging(b) != b.merging(a) { return }
    }
}

/// Checks that encode then decode gives back an equal value, and that the encoding is canonical.
public func expectRoundTrips<T: CRDT & BinaryCodable>(
    _ type: T.Type, cases: Int = 1_000, seed: UInt64, sourceLocation: SourceLocation = #_sourceLocation,
    generate: (inout SplitMix64) -> T
) {
    var random = SplitMix64(seed: seed)
    for index in 0..<cases {
        let value = generate(&random)
        let bytes = value.encoded()
        let decoded = try? T(decoding: bytes)  // a failure is reported as a mismatch below
        #expect(decoded == value, "round trip: \(T.self) case \(index) seed \(seed)", sourceLocation: sourceLocation)
        #expect(decoded?.encoded() == bytes, "canonical: \(T.self) case \(index)", sourceLocation: sourceLocation)
    }
}

extension SplitMix64 {
    /// A number in 0..<bound.
    public mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    /// True with the given probability in percent.
    public mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
}
