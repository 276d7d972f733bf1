using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Rbs.Agent.Outputs;
using Rbs.V1;

namespace Rbs.Tests.Agent.Outputs;

/// <summary>rbs.v1.Outputs against a real agent host whose build tool writes a BEP file (Assets/outputs-bazel.sh).</summary>
public sealed class OutputsServiceTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = OutputsAgent.Timeout;

    [Fact]
    public async Task ABuildsOutputsAreListedWithDigestsAndServedByteExact()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        var hello = Encoding.UTF8.GetBytes("hello, outputs\n");
        var big = new byte[(2 * OutputRecord.BlockSize) + 12345];
        new Random(7).NextBytes(big);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/app/hello.txt", hello);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/app/tool", big, executable: true);

        var invocation = await agent.BuildAsync(0, "--batch", "build", "//app:all", "--", "-x");

        // The agent's flag sits right after the verb; the rest of the command line is untouched.
        var args = agent.LastArgs();
        output.WriteLine(string.Join(' ', args));
        Assert.Equal("--batch", args[0]);
        Assert.Equal("build", args[1]);
        Assert.StartsWith(OutputCollector.BuildEventFlag + "=/", args[2], StringComparison.Ordinal);
        Assert.Equal(["//app:all", "--", "-x"], args[3..]);
        Assert.False(File.Exists(args[2][(OutputCollector.BuildEventFlag.Length + 1)..]), "the BEP file was left behind");

        var listing = await agent.Outputs.ListOutputsAsync(new ListOutputsRequest { InvocationId = invocation }).ResponseAsync.WaitAsync(s_timeout);
        Assert.Equal((uint)OutputRecord.BlockSize, listing.BlockSize);
        Assert.Equal(["bazel-out/k8-fastbuild/bin/app/hello.txt", "bazel-out/k8-fastbuild/bin/app/tool"], listing.Files.Select(f => f.Path).Order(StringComparer.Ordinal));
        var helloFile = listing.Files.Single(f => f.Path.EndsWith("hello.txt", StringComparison.Ordinal));
        var toolFile = listing.Files.Single(f => f.Path.EndsWith("/tool", StringComparison.Ordinal));
        Assert.Equal((ulong)hello.Length, helloFile.Size);
        Assert.Equal(SHA256.HashData(hello), helloFile.Digest.ToByteArray());
        Assert.False(helloFile.Executable);
        Assert.True(toolFile.Executable);
        Assert.Equal(SHA256.HashData(big), toolFile.Digest.ToByteArray());
        Assert.Equal(3, toolFile.BlockDigests.Count);
        for (var i = 0; i < 3; i++)
        {
            var block = big.AsSpan(i * OutputRecord.BlockSize, Math.Min(OutputRecord.BlockSize, big.Length - (i * OutputRecord.BlockSize)));
            Assert.Equal(SHA256.HashData(block), toolFile.BlockDigests[i].ToByteArray());
        }

        // Two ranges, in request order: the whole big file and a slice of the small one.
        var chunks = await ReadAsync(agent, invocation, (toolFile.Path, 0, (ulong)big.Length), (helloFile.Path, 7, 7));
        Assert.All(chunks, chunk => Assert.InRange(chunk.Data.Length, 1, OutputRecord.BlockSize));
        var toolBytes = chunks.Where(c => c.Path == toolFile.Path).SelectMany(c => c.Data.ToByteArray()).ToArray();
        Assert.True(big.AsSpan().SequenceEqual(toolBytes), "the big output did not come back byte for byte");
        Assert.Equal("outputs", Encoding.UTF8.GetString(chunks[^1].Data.Span));
        Assert.Equal(7UL, chunks[^1].Offset);
    }

    [Fact]
    public async Task InvocationsWithoutRecordedOutputsAreNotFoundWithTheReason()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/a.txt", [1, 2, 3]);

        var unknown = await ListFailureAsync(agent, "no-such-invocation");
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.Contains("no outputs recorded for invocation 'no-such-invocation'", unknown.Status.Detail, StringComparison.Ordinal);

        var query = await ListFailureAsync(agent, await agent.BuildAsync(0, "query", "//..."));
        Assert.Equal(StatusCode.NotFound, query.StatusCode);
        Assert.Contains("'build' commands only; this was 'query'", query.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain(agent.LastArgs(), arg => arg.StartsWith(OutputCollector.BuildEventFlag, StringComparison.Ordinal));

        var own = await ListFailureAsync(agent, await agent.BuildAsync(0, "build", "//...", "--build_event_json_file=/tmp/mine.json"));
        Assert.Equal(StatusCode.NotFound, own.StatusCode);
        Assert.Contains("sets its own --build_event_json_file", own.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(["build", "//...", "--build_event_json_file=/tmp/mine.json"], agent.LastArgs());

        File.WriteAllText(Path.Combine(agent.Agent.Workspace, "exit-code"), "1");
        var failed = await ListFailureAsync(agent, await agent.BuildAsync(1));
        Assert.Equal(StatusCode.NotFound, failed.StatusCode);
        Assert.Contains("the build failed (exit code 1)", failed.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task OnlyListedOutputsAndRangesInsideThemCanBeRead()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/a.txt", Encoding.ASCII.GetBytes("0123456789"));
        var invocation = await agent.BuildAsync();
        // Exists in the execroot, but was built after the listing: not an output of that invocation.
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/later.txt", [1]);

        foreach (var (path, offset, length, expected) in new (string, ulong, ulong, string)[]
        {
            ("bazel-out/k8-fastbuild/bin/later.txt", 0, 1, "is not an output of invocation"),
            ("bazel-out/k8-fastbuild/bin/../../../args.txt", 0, 1, "is not an output of invocation"),
            ("/etc/passwd", 0, 1, "is not an output of invocation"),
            ("bazel-out/k8-fastbuild/bin/a.txt", 5, 6, "past the end"),
            ("bazel-out/k8-fastbuild/bin/a.txt", 11, 0, "past the end"),
            ("bazel-out/k8-fastbuild/bin/a.txt", 1, ulong.MaxValue, "past the end"),
        })
        {
            var error = await Assert.ThrowsAsync<RpcException>(() => ReadAsync(agent, invocation, ("bazel-out/k8-fastbuild/bin/a.txt", 0, 1), (path, offset, length)));
            output.WriteLine($"{path} {offset}+{length}: {error.Status}");
            Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
            Assert.Contains(expected, error.Status.Detail, StringComparison.Ordinal);
        }

        var tail = await ReadAsync(agent, invocation, ("bazel-out/k8-fastbuild/bin/a.txt", 4, 6));
        Assert.Equal("456789", Encoding.ASCII.GetString(tail.Single().Data.Span));

        var notFound = await Assert.ThrowsAsync<RpcException>(() => ReadAsync(agent, "unknown", ("bazel-out/k8-fastbuild/bin/a.txt", 0, 1)));
        Assert.Equal(StatusCode.NotFound, notFound.StatusCode);
    }

    [Fact]
    public async Task AnOutputRebuiltSinceItWasListedIsAborted()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        var path = agent.WriteOutput("bazel-out/k8-fastbuild/bin/a.txt", Encoding.ASCII.GetBytes("version 1"));
        var invocation = await agent.BuildAsync();

        // Same size, new content and mtime: a later build rewrote it.
        File.WriteAllText(path, "version 2");
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(1));
        var error = await Assert.ThrowsAsync<RpcException>(() => ReadAsync(agent, invocation, ("bazel-out/k8-fastbuild/bin/a.txt", 0, 9)));
        Assert.Equal(StatusCode.Aborted, error.StatusCode);
        Assert.Contains("rebuilt since listed; retry", error.Status.Detail, StringComparison.Ordinal);

        File.Delete(path);
        var gone = await Assert.ThrowsAsync<RpcException>(() => ReadAsync(agent, invocation, ("bazel-out/k8-fastbuild/bin/a.txt", 0, 9)));
        Assert.Equal(StatusCode.Aborted, gone.StatusCode);

        // Listing again after a new build serves the new version.
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/a.txt", Encoding.ASCII.GetBytes("version 3"));
        var again = await agent.BuildAsync();
        var chunk = (await ReadAsync(agent, again, ("bazel-out/k8-fastbuild/bin/a.txt", 0, 9))).Single();
        Assert.Equal("version 3", Encoding.ASCII.GetString(chunk.Data.Span));
    }

    [Fact]
    public async Task OnlyTheMostRecentInvocationsAreKept()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/a.txt", [42]);
        var invocations = new List<string>();
        for (var i = 0; i <= OutputStore.MaxInvocations; i++)
        {
            invocations.Add(await agent.BuildAsync());
        }

        var oldest = await ListFailureAsync(agent, invocations[0]);
        Assert.Equal(StatusCode.NotFound, oldest.StatusCode);
        foreach (var recent in invocations.Skip(1))
        {
            var listing = await agent.Outputs.ListOutputsAsync(new ListOutputsRequest { InvocationId = recent }).ResponseAsync.WaitAsync(s_timeout);
            Assert.Single(listing.Files);
        }
    }

    private static async Task<RpcException> ListFailureAsync(OutputsAgent agent, string invocationId) =>
        await Assert.ThrowsAsync<RpcException>(() =>
            agent.Outputs.ListOutputsAsync(new ListOutputsRequest { InvocationId = invocationId }).ResponseAsync.WaitAsync(s_timeout));

    private static async Task<List<OutputChunk>> ReadAsync(OutputsAgent agent, string invocationId, params (string Path, ulong Offset, ulong Length)[] ranges)
    {
        var request = new ReadOutputsRequest { InvocationId = invocationId };
        request.Ranges.AddRange(ranges.Select(r => new OutputRange { Path = r.Path, Offset = r.Offset, Length = r.Length }));
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = agent.Outputs.ReadOutputs(request, cancellationToken: cts.Token);
        var chunks = new List<OutputChunk>();
        await foreach (var chunk in call.ResponseStream.ReadAllAsync(cts.Token))
        {
            chunks.Add(chunk);
        }

        return chunks;
    }
}
