using Grpc.Core;
using Rbs.JBazel;

namespace Rbs.Tests.JBazel;

public sealed class ExitCodesTests
{
    [Theory]
    [InlineData(StatusCode.Unavailable, 38)]
    [InlineData(StatusCode.DeadlineExceeded, 38)]
    [InlineData(StatusCode.ResourceExhausted, 38)]
    [InlineData(StatusCode.Aborted, 38)]
    [InlineData(StatusCode.Unknown, 38)]
    [InlineData(StatusCode.Cancelled, 38)]
    [InlineData(StatusCode.InvalidArgument, 34)]
    [InlineData(StatusCode.FailedPrecondition, 34)]
    [InlineData(StatusCode.PermissionDenied, 34)]
    [InlineData(StatusCode.Unauthenticated, 34)]
    [InlineData(StatusCode.NotFound, 34)]
    [InlineData(StatusCode.Unimplemented, 34)]
    [InlineData(StatusCode.Internal, 34)]
    public void ServerStatusMapsToBazelsRemoteExitCodes(StatusCode code, int exitCode)
    {
        Assert.Equal(exitCode, ExitCodes.ForRemoteStatus(code));
        Assert.Equal(exitCode, ExitCodes.ForRemoteStatus(new RpcException(new Status(code, "from the server"))));
    }

    [Theory]
    [InlineData(StatusCode.Internal)]
    [InlineData(StatusCode.InvalidArgument)]
    public void TransportFailuresAreTransientWhateverTheirCode(StatusCode code)
    {
        var broken = new RpcException(new Status(code, "stream reset", new IOException("The response ended prematurely.")));
        Assert.Equal(ExitCodes.TransientRemoteError, ExitCodes.ForRemoteStatus(broken));
    }

    [Fact]
    public void ConstantsAreBazels()
    {
        Assert.Equal(2, ExitCodes.CommandLineError);
        Assert.Equal(8, ExitCodes.Interrupted);
        Assert.Equal(34, ExitCodes.RemoteEnvironmentError);
        Assert.Equal(37, ExitCodes.InternalError);
        Assert.Equal(38, ExitCodes.TransientRemoteError);
    }
}
