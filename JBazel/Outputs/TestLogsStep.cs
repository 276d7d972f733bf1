using Grpc.Core;
using Rbs.JBazel.Remote;
using Rbs.JBazel.Sync;
using Rbs.JBazel.Terminal;

namespace Rbs.JBazel.Outputs;

/// <summary>
/// After a <c>test</c> or <c>coverage</c> on an agent with its own copy of the workspace: bazel's summary names log
/// files on the agent, so jbazel brings the <c>test.log</c>/<c>test.xml</c> of every test attempt that did not pass
/// (failed, timed out, flaky) into <c>jbazel-out/testlogs/</c>, laid out like bazel-testlogs, and says where in one
/// <c>rbs:</c> line after bazel's own output, which it leaves byte for byte as it was. The exit code stays bazel's
/// (3 when tests failed): a fetch that fails is one <c>rbs: warning:</c> line, never a different exit code.
/// </summary>
internal static class TestLogsStep
{
    public const string FolderName = "testlogs";

    /// <summary>Only when the agent does not share this filesystem (there bazel-testlogs is right here), and only for test/coverage.</summary>
    public static bool Applies(bool synced, bool fetchTestLogs, IReadOnlyList<string> bazelArgs) =>
        synced && fetchTestLogs && BazelStartupArgs.Split(bazelArgs).Command is "test" or "coverage";

    public static async Task RunAsync(
        Allocation allocation,
        ChannelPool channels,
        string workspaceRoot,
        string invocationId,
        StandardStreams streams,
        CancellationToken cancellationToken)
    {
        var client = new V1.Outputs.OutputsClient(channels.ForAgent(allocation));
        try
        {
            var fetcher = new OutputFetcher(client, allocation.Headers, workspaceRoot);
            var (report, labels) = await fetcher.FetchWithLabelsAsync(invocationId, cancellationToken);
            if (report.Files > 0)
            {
                streams.WriteErrorLine(Line(Path.Combine(workspaceRoot, OutputFetcher.FolderName, FolderName) + "/", labels));
            }
        }
        catch (Exception ex) when (cancellationToken.IsCancellationRequested && ex is RpcException or OperationCanceledException)
        {
            // Ctrl-C while fetching: bazel's exit code (8 for an interrupted test) is the answer.
        }
        catch (RpcException ex)
        {
            streams.WriteErrorLine($"rbs: warning: the logs of the tests that did not pass could not be fetched from agent {allocation.AgentId} ({ex.StatusCode}): {RemoteFailure.Describe(ex)}");
        }
        catch (OutputFetchException ex)
        {
            streams.WriteErrorLine($"rbs: warning: the logs of the tests that did not pass could not be fetched: {ex.Message}.");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            streams.WriteErrorLine($"rbs: warning: the logs of the tests that did not pass could not be written to {OutputFetcher.FolderName}/{FolderName}/: {ex.Message}");
        }
    }

    /// <summary>The one line: where the logs are and whose they are (at most five labels named).</summary>
    internal static string Line(string directory, IReadOnlyList<string> labels)
    {
        const int Named = 5;
        var tests = labels.Count == 1 ? "1 test" : $"{labels.Count} tests";
        var names = string.Join(", ", labels.Take(Named)) + (labels.Count > Named ? $", and {labels.Count - Named} more" : "");
        return $"rbs: logs of {tests} that did not pass ({names}) are in {directory}";
    }
}
