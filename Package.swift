// swift-tools-version:6.0
// Kith — a distributed customer-profile store. No package dependencies: the toolchain,
// plus LMDB and OpenSSL's libcrypto from Debian through system library targets.
import PackageDescription

// Release builds optimise across modules: the pure cores are generic (CRDT maps, codecs), and
// without this every call from the store into them goes through unspecialised generic code.
let optimizeAcrossModules: [SwiftSetting] = [.unsafeFlags(["-cross-module-optimization"], .when(configuration: .release))]

let package = Package(
    name: "Kith",
    platforms: [.macOS(.v15)],
    targets: [
        // C libraries, each behind one system library target and one shim header.
        .systemLibrary(name: "CLMDB", pkgConfig: "lmdb", providers: [.apt(["liblmdb-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CLinux"),

        // Pure cores: stdlib only, no I/O, no clocks, no global randomness.
        .target(name: "KithCRDT", swiftSettings: optimizeAcrossModules),
        .target(name: "KithJSON", dependencies: ["KithCRDT"], swiftSettings: optimizeAcrossModules),
        .target(name: "KithProfile", dependencies: ["KithCRDT", "KithJSON", "KithCrypto"], swiftSettings: optimizeAcrossModules),
        .target(name: "KithHTTP", swiftSettings: optimizeAcrossModules),
        .target(name: "KithReplication", dependencies: ["KithCRDT", "KithProfile"], swiftSettings: optimizeAcrossModules),
        // Consent and purpose evaluation, masking, and the rendering of a profile as one read may see it.
        .target(name: "KithPolicy", dependencies: ["KithCRDT", "KithJSON", "KithProfile"], swiftSettings: optimizeAcrossModules),

        // Storage and thin shells.
        .target(name: "KithLMDB", dependencies: ["CLMDB"], swiftSettings: optimizeAcrossModules),
        .target(name: "KithCrypto", dependencies: ["CCrypto"], swiftSettings: optimizeAcrossModules),
        .target(name: "KithCompression", dependencies: ["CZlib"], swiftSettings: optimizeAcrossModules),
        .target(name: "KithNet", dependencies: ["KithHTTP", "CLinux"], swiftSettings: optimizeAcrossModules),
        // How the CLI shows documents to people (tables, humanized sizes, durations and times).
        .target(name: "KithTerminal", dependencies: ["KithJSON"], swiftSettings: optimizeAcrossModules),
        // The HTTP API as a route table over protocols (writer, replication, audit, host): no
        // sockets, threads or clocks of its own, so every route is tested in process.
        .target(
            name: "KithAPI",
            dependencies: [
                "KithHTTP", "KithJSON", "KithCRDT", "KithProfile", "KithPolicy", "KithStore", "KithCluster", "KithReplication", "KithCrypto",
                "KithCompression",
            ],
            swiftSettings: optimizeAcrossModules),
        .target(
            name: "KithNode",
            dependencies: ["KithAPI", "KithStore", "KithStoreLMDB", "KithCluster", "KithPolicy", "KithNet", "KithCompression", "KithCrypto"],
            swiftSettings: optimizeAcrossModules),
        .executableTarget(
            name: "kith", dependencies: ["KithNode", "KithAPI", "KithNet", "KithHTTP", "KithJSON", "KithPolicy", "KithProfile", "KithTerminal"],
            swiftSettings: optimizeAcrossModules
        ),
        .target(name: "KithStore", dependencies: ["KithProfile", "KithCrypto", "KithCompression"], swiftSettings: optimizeAcrossModules),
        // The durable store: LMDB, sealing, the key file. Kept apart so the replication core does not link LMDB.
        .target(name: "KithStoreLMDB", dependencies: ["KithStore", "KithLMDB", "KithCrypto"], swiftSettings: optimizeAcrossModules),
        // Replication over a store, with no I/O of its own: run on sockets by KithNode, in one process by the simulation.
        .target(name: "KithCluster", dependencies: ["KithStore", "KithReplication", "KithPolicy"], swiftSettings: optimizeAcrossModules),

        // Fuzzing: `make fuzz` builds kith-fuzz with libFuzzer; a normal build replays corpora.
        .target(name: "CFuzzerDriver"),
        .executableTarget(name: "kith-fuzz", dependencies: ["CFuzzerDriver", "KithProfile", "KithHTTP", "KithReplication"]),

        // Benchmarks: `make bench` prints `name: value` lines.
        .executableTarget(
            name: "kith-bench",
            dependencies: [
                "CLMDB", "KithStore", "KithStoreLMDB", "KithLMDB", "KithNet", "KithHTTP", "KithJSON", "KithCrypto", "KithNode", "KithAPI",
                "KithPolicy",
                "KithTestSupport",
            ], path: "Benchmarks/KithBench",
            swiftSettings: optimizeAcrossModules),

        // Shared test helpers (seeded generators, law checks); used only by test targets.
        .target(name: "KithTestSupport", dependencies: ["KithCRDT", "KithJSON", "KithProfile"], swiftSettings: optimizeAcrossModules),
        .testTarget(name: "KithCRDTTests", dependencies: ["KithCRDT", "KithTestSupport"]),
        .testTarget(name: "KithJSONTests", dependencies: ["KithJSON", "KithTestSupport"]),
        .testTarget(name: "KithProfileTests", dependencies: ["KithProfile", "KithTestSupport"]),
        .testTarget(name: "KithLMDBTests", dependencies: ["KithLMDB", "KithCRDT", "KithTestSupport"]),
        .testTarget(
            name: "KithStoreTests", dependencies: ["KithStore", "KithStoreLMDB", "KithLMDB", "KithPolicy", "KithCompression", "KithTestSupport"],
            exclude: ["Fixtures"]),
        .testTarget(name: "KithHTTPTests", dependencies: ["KithHTTP", "KithTestSupport"]),
        .testTarget(name: "KithCompressionTests", dependencies: ["KithCompression", "KithTestSupport"]),
        .testTarget(name: "KithCryptoTests", dependencies: ["KithCrypto", "KithCRDT", "KithTestSupport"]),
        .testTarget(name: "KithNetTests", dependencies: ["KithNet", "KithTestSupport"]),
        .testTarget(name: "KithTerminalTests", dependencies: ["KithTerminal", "KithJSON"]),
        .testTarget(name: "KithReplicationTests", dependencies: ["KithReplication", "KithCrypto", "KithTestSupport"]),
        .testTarget(name: "KithPolicyTests", dependencies: ["KithPolicy", "KithTestSupport"]),
        .testTarget(name: "KithSimulationTests", dependencies: ["KithCluster", "KithPolicy", "KithTestSupport"]),
        .testTarget(
            name: "KithAPITests",
            dependencies: [
                "KithAPI", "KithStore", "KithCluster", "KithProfile", "KithReplication", "KithJSON", "KithHTTP", "KithPolicy", "KithCrypto",
                "KithCompression", "KithTestSupport",
            ]),
        .testTarget(
            name: "KithNodeTests", dependencies: ["KithNode", "KithAPI", "KithStore", "KithStoreLMDB", "KithJSON", "KithProfile", "KithTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
