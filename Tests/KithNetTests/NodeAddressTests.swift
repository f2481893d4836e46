import Testing

@testable import KithNet

/// Addresses as operators write them for `--host` and `KITH_HOST` (etcdctl and consul users
/// write URLs), and clear refusals for the rest.
@Suite("Node addresses")
struct NodeAddressTests {
    @Test(arguments: [
        ("127.0.0.1:7080", "127.0.0.1", 7080), ("http://127.0.0.1:7080", "127.0.0.1", 7080), ("HTTP://127.0.0.1:9000/", "127.0.0.1", 9000),
        ("localhost", "localhost", 7080), ("localhost:81", "localhost", 81), ("http://kith-1.example", "kith-1.example", 7080),
        ("[::1]:7080", "::1", 7080), ("http://[::1]", "::1", 7080), ("::1", "::1", 7080), (" 10.0.0.2:1 ", "10.0.0.2", 1),
    ])
    func readsWhatOperatorsWrite(_ text: String, _ host: String, _ port: Int) throws {
        #expect(try NodeAddress(parsing: text) == NodeAddress(host: host, port: UInt16(port)))
    }

    @Test(arguments: [
        ("https://127.0.0.1:7080", "not supported"), ("127.0.0.1:0", "port must be 1 to 65535"), ("127.0.0.1:99999", "port must be"),
        ("127.0.0.1:http", "port must be"), ("http://127.0.0.1:7080/v1", "without a path"), ("", "no host"), ("http://", "no host"),
        ("[::1", "closing ]"), ("[::1]7080", "expected :port"), ("user@host:1", "not a host name"),
    ])
    func refusesWithAReason(_ text: String, _ reason: String) {
        #expect(throws: NodeAddress.Invalid.self) { try NodeAddress(parsing: text) }
        do { _ = try NodeAddress(parsing: text) } catch { #expect(error.description.contains(reason), "\(text): \(error)") }
    }

    @Test func printsWhatItReads() throws {
        #expect(try NodeAddress(parsing: "http://[::1]:81").description == "[::1]:81")
        #expect(try NodeAddress(parsing: "localhost").description == "localhost:7080")
    }
}
