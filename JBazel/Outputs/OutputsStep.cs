using Grpc.Core;
using Rbs.JBazel.Remote;
using Rbs.JBazel.Terminal;

namespace Rbs.JBazel.Outputs;

/// <summary>
/// <c>--rbs_fetch_outputs</c>: after a successful remote <c>build</c>, fetch its top-level outputs into jbazel-out/.
/// A failure is one <c>rbs:</c> line and exit code 38 (running again may help), 34 (the agent's answer is unusable or
/// refused) or 36 (the local disk: permissions, space); the build's own success is stated in that line.
/// </summary>
internal static class OutputsStep
{
    /// <summary>Whether this command line asks for outputs: only <c>build</c> (not query, cquery, info, test, run, ...).</summary>
    public static bool Applies(bool fetchOutputs, IReadOnlyList<string> bazelArgs) =>
        fetchOutputs && Sync.BazelStartupArgs.Split(bazelArgs).Command == "build";

    /// <returns>The exit code: 0 when every output is in place.</returns>
    public static async Task<int> RunAsync(
        Allocation allocation,
        ChannelPool channels,
        string workspaceRoot,
        string invocationId,
        bool printStatus,
        StandardStreams streams,
        CancellationToken cancellationToken)
    {
        var client = new V1.Outputs.OutputsClient(channels.ForAgent(allocation));
        var fetcher = new OutputFetcher(client, allocation.Headers, workspaceRoot);
        try
        {
            var report = await fetcher.FetchAsync(invocationId, cancellationToken);
            if (printStatus)
            {
                streams.WriteErrorLine(report.StatusLine);
            }

            return ExitCodes.Success;
        }
        catch (RpcException) when (cancellationToken.IsCancellationRequested)
        {
            throw new OperationCanceledException(cancellationToken);
        }
        catch (RpcException ex)
        {
            throw new RemoteFailure(ExitCodes.ForRemoteStatus(ex),
                $"the build succeeded, but fetching its outputs from agent {allocation.AgentId} failed ({ex.StatusCode}): {RemoteFailure.Describe(ex)}" +
                (RemoteFailure.IsTransient(ex) ? " Run the command again." : ""));
        }
        catch (OutputFetchException ex)
        {
            throw new RemoteFailure(ex.Transient ? ExitCodes.TransientRemoteError : ExitCodes.RemoteEnvironmentError,
                $"the build succeeded, but fetching its outputs failed: {ex.Message}.");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new RemoteFailure(ExitCodes.LocalEnvironmentError,
                $"the build succeeded, but its outputs could not be written to {OutputFetcher.FolderName}/: {ex.Message}");
        }
    }
}
