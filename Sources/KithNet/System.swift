#if canImport(Glibc)
    import Glibc
#endif

/// A failed system call: which call, and the errno it set.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    public var call: String
    public var errno: Int32

    public init(call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// What a non-blocking call did.
enum IOResult<Value> {
    case done(Value)
    /// EAGAIN / EWOULDBLOCK: try again when the descriptor is ready.
    case wouldBlock
}

/// Every system call of the network shell goes through here: EINTR is retried, EAGAIN is a value,
/// EBADF and EFAULT are programming errors (trap), and anything else throws with the call's name.
@inline(__always)
func system<T: FixedWidthInteger>(_ call: StaticString, _ body: () -> T) throws(SystemError) -> IOResult<T> {
    while true {
        let result = body()
        if result >= 0 { return .done(result) }
        let error = errno
        switch error {
        case EINTR: continue
        case EAGAIN, EWOULDBLOCK: return .wouldBlock
        case EBADF, EFAULT: preconditionFailure("\(call): errno \(error) — a bug in Kith, not an operating error")
        default: throw SystemError(call: "\(call)", errno: error)
        }
    }
}

/// For calls that never legitimately block.
@inline(__always)
@discardableResult
func systemValue<T: FixedWidthInteger>(_ call: StaticString, _ body: () -> T) throws(SystemError) -> T {
    switch try system(call, body) {
    case .done(let value): return value
    case .wouldBlock: throw SystemError(call: "\(call)", errno: EAGAIN)
    }
}
