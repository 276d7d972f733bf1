using Grpc.Core;
using Rbs.JBazel.Remote;

namespace Rbs.JBazel;

/// <summary>
/// jbazel's exit codes. The remote tool's own exit code passes through unchanged (bazel: 0 success,
/// 1 build failure, 3 tests failed, 37 internal error, ...); jbazel adds only bazel's codes for what goes
/// wrong around it. The mapping is documented in JBazel/README.md ("Exit codes").
/// </summary>
internal static class ExitCodes
{
    /// <summary>Help or version printed.</summary>
    public const int Success = 0;

    /// <summary>
    /// Bazel's COMMAND_LINE_ERROR: a bad <c>--rbs_*</c> option or rc/environment value, or the current
    /// directory is not inside a workspace.
    /// </summary>
    public const int CommandLineError = 2;

    /// <summary>
    /// Bazel's INTERRUPTED: Ctrl-C while allocating, or a second Ctrl-C while the command ran. After a
    /// single Ctrl-C jbazel waits for the remote bazel's own exit code, which is normally 8 as well.
    /// </summary>
    public const int Interrupted = 8;

    /// <summary>
    /// Bazel's REMOTE_ERROR, used by RBS for permanent remote-environment failures: the orchestrator or
    /// agent rejected the request (invalid argument, failed precondition, permission denied,
    /// unauthenticated, not found, unimplemented) or answered with something unusable. Retrying will not help.
    /// </summary>
    public const int RemoteEnvironmentError = 34;

    /// <summary>
    /// Bazel's LOCAL_ENVIRONMENTAL_ERROR: something on this machine stops jbazel, e.g. a workspace file it cannot
    /// read for the workspace sync, or <c>--rbs_fetch_outputs</c> cannot write the outputs of a successful build
    /// (permissions, disk full).
    /// </summary>
    public const int LocalEnvironmentError = 36;

    /// <summary>
    /// Transient remote failure (bazel uses 38 for transient remote errors): the orchestrator or agent
    /// could not be reached, timed out, or the connection broke before the command's exit status arrived.
    /// Running the command again may succeed.
    /// </summary>
    public const int TransientRemoteError = 38;

    /// <summary>
    /// The orchestrator refused to start another agent because an agent limit is reached (GetServer ResourceExhausted:
    /// <c>--max-agents-per-user</c> or <c>--max-agents</c>). Distinct from 38 on purpose: running the command again at once
    /// will not help, and a script should wait or free an agent instead. Bazel's codes stop at 48 (0–4, 6–9, 32–39, 45,
    /// 48), so 50 can never be mistaken for one of bazel's own.
    /// </summary>
    public const int AgentLimitReached = 50;

    /// <summary>
    /// Standard output was a pipe whose reader went away (<c>jbazel ... | head</c>): the remote command
    /// is abandoned quietly with the code a shell reports for a process ended by SIGPIPE (128 + 13).
    /// </summary>
    public const int BrokenPipe = 141;

    /// <summary>
    /// Bazel's BLAZE_INTERNAL_ERROR: a bug in jbazel itself (an unexpected exception).
    /// </summary>
    public const int InternalError = 37;

    /// <summary>
    /// The exit code for a failed orchestrator or agent call: 38 when repeating may help (Unavailable,
    /// DeadlineExceeded, ResourceExhausted — except from GetServer, which is <see cref="AgentLimitReached"/> —, Aborted,
    /// Unknown, Cancelled), 34 otherwise (InvalidArgument,
    /// FailedPrecondition, PermissionDenied, Unauthenticated, NotFound, Unimplemented, Internal, ...).
    /// </summary>
    public static int ForRemoteStatus(StatusCode code) =>
        RemoteFailure.IsTransient(code) ? TransientRemoteError : RemoteEnvironmentError;

    /// <summary>
    /// As <see cref="ForRemoteStatus(StatusCode)"/>, except that a transport failure (reset stream, closed
    /// socket: the status carries a client-side exception) is always 38, whatever code it was mapped to.
    /// </summary>
    public static int ForRemoteStatus(RpcException ex) =>
        RemoteFailure.IsTransient(ex) ? TransientRemoteError : RemoteEnvironmentError;
}
