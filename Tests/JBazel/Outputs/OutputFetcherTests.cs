using System.Text;
using Grpc.Core;
using Rbs.JBazel.Outputs;
using Rbs.Tests.Agent.Outputs;

namespace Rbs.Tests.JBazel.Outputs;

/// <summary>jbazel's block-delta fetch against a real agent host (build tool: Tests/Agent/Outputs/Assets/outputs-bazel.sh).</summary>
public sealed class OutputFetcherTests(ITestOutputHelper output) : IDisposable
{
    private const int Block = 1024 * 1024;

    private readonly DirectoryInfo _laptop = Directory.CreateTempSubdirectory("rbs-laptop-ws-");

    public void Dispose() => _laptop.Delete(recursive: true);

    [Fact]
    public async Task FirstFetchIsByteExactWithExecBitsAndAnUnchangedRebuildTransfersNothing()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        var hello = Encoding.UTF8.GetBytes("hello\n");
        var tool = Random(3 * Block + 99, seed: 1);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/app/hello.txt", hello);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/app/tool", tool, executable: true);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/app/empty", []);

        var first = await FetchAsync(agent, await agent.BuildAsync());

        Assert.Equal(3, first.Files);
        Assert.Equal(3, first.Changed);
        Assert.Equal(hello.Length + tool.Length, first.BytesFetched);
        AssertFile("k8-fastbuild/bin/app/hello.txt", hello, executable: false);
        AssertFile("k8-fastbuild/bin/app/tool", tool, executable: true);
        AssertFile("k8-fastbuild/bin/app/empty", [], executable: false);
        Assert.Empty(Directory.EnumerateFiles(Out(""), "*.tmp", SearchOption.AllDirectories));

        var second = await FetchAsync(agent, await agent.BuildAsync());

        Assert.Equal(3, second.Files);
        Assert.Equal(0, second.Changed);
        Assert.Equal(0, second.BytesFetched);
        AssertFile("k8-fastbuild/bin/app/tool", tool, executable: true);
        Assert.Matches(@"^rbs: outputs: 3 files in jbazel-out/ \(0 changed, 0 B fetched\) in \d+ ms$", second.StatusLine);
    }

    [Fact]
    public async Task AChangeInOneBlockOfAMultiMebibyteOutputTransfersAboutOneBlock()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        var content = Random(5 * Block + 12345, seed: 2);
        var path = agent.WriteOutput("bazel-out/k8-fastbuild/bin/big.bin", content);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/other.txt", Encoding.UTF8.GetBytes("unchanged"));
        await FetchAsync(agent, await agent.BuildAsync());

        // Rewrite a few bytes in the middle of block 2 (a new file, as bazel writes outputs).
        content[(2 * Block) + 4242] ^= 0xff;
        content[(2 * Block) + 4243] ^= 0xff;
        File.Delete(path);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/big.bin", content);
        var changed = await FetchAsync(agent, await agent.BuildAsync());

        Assert.Equal(1, changed.Changed);
        Assert.Equal(Block, changed.BytesFetched);
        AssertFile("k8-fastbuild/bin/big.bin", content, executable: false);

        // Growing the file: only the last (partial) block changes, so only it travels.
        var grown = content.Concat(Random(100, seed: 3)).ToArray();
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/big.bin", grown);
        var tail = await FetchAsync(agent, await agent.BuildAsync());

        Assert.Equal(12345 + 100, tail.BytesFetched);
        AssertFile("k8-fastbuild/bin/big.bin", grown, executable: false);

        // A local copy damaged by hand is repaired block by block too.
        using (var local = File.OpenWrite(Out("k8-fastbuild/bin/big.bin")))
        {
            local.Position = 10;
            local.Write([1, 2, 3]);
        }

        var repaired = await FetchAsync(agent, await agent.BuildAsync());
        Assert.Equal(Block, repaired.BytesFetched);
        AssertFile("k8-fastbuild/bin/big.bin", grown, executable: false);
    }

    [Fact]
    public async Task AnExecBitChangeAloneIsAppliedWithoutTransfer()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        var script = Encoding.UTF8.GetBytes("#!/bin/sh\necho hi\n");
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/run.sh", script);
        await FetchAsync(agent, await agent.BuildAsync());
        AssertFile("k8-fastbuild/bin/run.sh", script, executable: false);

        agent.WriteOutput("bazel-out/k8-fastbuild/bin/run.sh", script, executable: true);
        var report = await FetchAsync(agent, await agent.BuildAsync());

        Assert.Equal(0, report.BytesFetched);
        AssertFile("k8-fastbuild/bin/run.sh", script, executable: true);
    }

    [Theory]
    [InlineData("bazel-out/k8-fastbuild/bin/app/hello.txt", "k8-fastbuild/bin/app/hello.txt")]
    [InlineData("external/repo/file.txt", "external/repo/file.txt")]
    [InlineData("bazel-out", "bazel-out")]
    [InlineData("../escape", null)]
    [InlineData("bazel-out/../../escape", null)]
    [InlineData("bazel-out/k8/bin/../../../../etc/passwd", null)]
    [InlineData("/etc/passwd", null)]
    [InlineData("bazel-out//double", null)]
    [InlineData("bazel-out/./dot", null)]
    [InlineData("", null)]
    [InlineData("a\\..\\b", null)]
    [InlineData("nul\0byte", null)]
    public void DestinationPathsStayInsideJBazelOut(string outputPath, string? expected) =>
        Assert.Equal(expected, OutputFetcher.DestinationPath(outputPath));

    [Fact]
    public async Task ASymlinkInsideJBazelOutCannotCarryWritesOutside()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        agent.WriteOutput("bazel-out/k8-fastbuild/bin/app/hello.txt", Encoding.UTF8.GetBytes("hello"));
        var outside = Directory.CreateTempSubdirectory("rbs-outside-");
        try
        {
            Directory.CreateDirectory(Out(""));
            Directory.CreateSymbolicLink(Out("k8-fastbuild"), outside.FullName);

            var error = await Assert.ThrowsAsync<OutputFetchException>(async () => await FetchAsync(agent, await agent.BuildAsync()));

            output.WriteLine(error.Message);
            Assert.False(error.Transient);
            Assert.Contains("outside jbazel-out/", error.Message, StringComparison.Ordinal);
            Assert.Empty(Directory.EnumerateFileSystemEntries(outside.FullName, "*", SearchOption.AllDirectories));
        }
        finally
        {
            outside.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task AnUnknownInvocationFailsWithNotFound()
    {
        await using var agent = await OutputsAgent.StartAsync(output);
        var error = await Assert.ThrowsAsync<RpcException>(() => FetchAsync(agent, "never-ran"));
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        Assert.False(Directory.Exists(Out("k8-fastbuild")));
    }

    private async Task<FetchReport> FetchAsync(OutputsAgent agent, string invocationId)
    {
        var fetcher = new OutputFetcher(agent.Outputs, new Metadata(), _laptop.FullName);
        var report = await fetcher.FetchAsync(invocationId, CancellationToken.None).WaitAsync(OutputsAgent.Timeout);
        output.WriteLine(report.StatusLine);
        return report;
    }

    private string Out(string relative) => Path.Combine(_laptop.FullName, OutputFetcher.FolderName, relative);

    private void AssertFile(string relative, byte[] expected, bool executable)
    {
        var path = Out(relative);
        var actual = File.ReadAllBytes(path);
        Assert.True(expected.AsSpan().SequenceEqual(actual), $"{relative}: {actual.Length} bytes differ from the {expected.Length} expected");
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(executable, (File.GetUnixFileMode(path) & UnixFileMode.UserExecute) != 0);
        }
    }

    private static byte[] Random(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
